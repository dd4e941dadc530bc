"""Read a trace, rejecting foreign, corrupt, truncated and newer-version files with one clear line."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import msgpack
import zstandard

from detrun.errors import TraceError
from detrun.trace.format import DECLARE_KIND, END, FORMAT_NAME, FORMAT_VERSION, ZSTD_MAGIC, make_unpacker

READ_BYTES = 1 << 16


@dataclasses.dataclass
class Trace:
    """A decoded trace: the header, the events grouped by process role and kind, and the end record."""

    path: str
    header: dict[str, Any]
    events: dict[str, dict[str, list[Any]]]
    end: dict[str, Any] | None
    size: int

    @property
    def complete(self) -> bool:
        """Return whether the recorded run finished normally (a killed run's trace is incomplete)."""
        return self.end is not None and bool(self.end.get("complete", False))

    def of(self, kind: str, role: str = "main") -> list[Any]:
        """Return the payloads of one kind for one process role, in recorded order."""
        return self.events.get(role, {}).get(kind, [])

    def count(self) -> int:
        """Return the number of events in all roles."""
        return sum(len(v) for kinds in self.events.values() for v in kinds.values())


class _Truncated(Exception):
    """The byte stream stops inside a zstd frame or a msgpack object."""


def _decompressed_chunks(path: str) -> Iterator[bytes]:
    """Yield the decompressed bytes of every zstd frame in the file, raising on damage."""
    with open(path, "rb") as f:
        if f.read(4) != ZSTD_MAGIC:
            raise TraceError(f"{path} is not a detrun trace (not zstd-compressed)")
        f.seek(0)
        dctx = zstandard.ZstdDecompressor()
        decompressor = dctx.decompressobj()
        fed_current_frame = False
        while data := f.read(READ_BYTES):
            while data:
                fed_current_frame = True
                try:
                    out = decompressor.decompress(data)
                except zstandard.ZstdError as exc:
                    raise TraceError(f"{path} is corrupt ({exc})") from None
                if out:
                    yield out
                if not decompressor.eof:
                    break
                # One frame ended; the rest of this read belongs to the next frame.
                data = decompressor.unused_data
                decompressor = dctx.decompressobj()
                fed_current_frame = False
        if fed_current_frame and not decompressor.eof:
            raise _Truncated()


def iter_objects(path: str) -> Iterator[Any]:
    """Yield every msgpack object of a trace in order; raise _Truncated or TraceError on damage."""
    unpacker = make_unpacker()
    fed = 0
    for chunk in _decompressed_chunks(path):
        unpacker.feed(chunk)
        fed += len(chunk)
        try:
            yield from unpacker
        except (msgpack.UnpackException, ValueError) as exc:
            raise TraceError(f"{path} is corrupt (bad record: {exc})") from None
    if unpacker.tell() != fed:
        raise _Truncated()


def _check_header(path: str, header: Any) -> dict[str, Any]:
    """Validate the first object of a trace."""
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise TraceError(f"{path} is not a detrun trace (foreign header)")
    version = header.get("version")
    if not isinstance(version, int):
        raise TraceError(f"{path} is corrupt (header has no integer version)")
    if version > FORMAT_VERSION:
        raise TraceError(
            f"{path} was written by a newer detrun (trace format {version}; this detrun reads up to "
            f"{FORMAT_VERSION}): upgrade detrun"
        )
    return header


def _open_check(path: str) -> None:
    """Fail with one line when the path is not a readable file."""
    if not os.path.exists(path):
        raise TraceError(f"no such trace: {path}")
    if not os.path.isfile(path):
        raise TraceError(f"{path} is not a file")
    if not os.access(path, os.R_OK):
        raise TraceError(f"cannot read {path}: permission denied")


def read_header(path: str) -> dict[str, Any]:
    """Return the header of a trace, reading only the start of the file."""
    _open_check(path)
    try:
        for obj in iter_objects(path):
            return _check_header(path, obj)
    except _Truncated:
        pass
    raise TraceError(f"{path} is truncated (no complete header)")


def read_trace(path: str) -> Trace:
    """Decode a whole trace; raise TraceError on any damage, including a missing end record."""
    _open_check(path)
    objects = iter_objects(path)
    try:
        header = _check_header(path, next(objects))
        events: dict[str, dict[str, list[Any]]] = {"main": {}}
        role_events = events["main"]
        kinds: dict[int, str] = {}
        end: dict[str, Any] | None = None
        for obj in objects:
            if isinstance(obj, dict) and "segment" in obj:
                role_events = events.setdefault(str(obj["segment"]), {})
                kinds = {}
                continue
            if not isinstance(obj, list) or len(obj) != 2 or not isinstance(obj[0], int):
                raise TraceError(f"{path} is corrupt (malformed event)")
            kind_id, payload = obj
            if kind_id == DECLARE_KIND:
                kinds[payload[0]] = payload[1]
            elif kind_id == END:
                end = payload
            elif kind_id in kinds:
                role_events.setdefault(kinds[kind_id], []).append(payload)
            else:
                raise TraceError(f"{path} is corrupt (undeclared event kind {kind_id})")
    except StopIteration:
        raise TraceError(f"{path} is truncated (empty stream)") from None
    except _Truncated:
        raise TraceError(f"{path} is truncated (the file ends mid-record; was it copied partially?)") from None
    if end is None:
        raise TraceError(f"{path} is truncated (no end record)")
    return Trace(path, header, events, end, os.path.getsize(path))


def salvage_objects(path: str) -> list[Any]:
    """Return every object that decodes from a damaged trace's prefix (for a killed recording)."""
    salvaged: list[Any] = []
    try:
        for obj in iter_objects(path):
            salvaged.append(obj)
    except (_Truncated, TraceError):
        pass
    return salvaged
