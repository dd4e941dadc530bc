"""Read a trace, rejecting foreign, corrupt, truncated, newer-version and ill-typed files with one line.

Every object is checked as it is decoded: the header, the end record and each event's payload
against the schema its kind has in detrun.trace.registry. Decompression streams with caps on the
zstd window, on every record and on the total output, so a small file cannot expand into
gigabytes. The per-step kinds (`registry.EventKind.streamed`) are kept from the first pass only
while they are few (MAX_HELD_STEP_EVENTS); beyond that they are counted, not kept, and replay reads
them again, lazily, as the program consumes them, so its memory does not grow with the length of
training.
"""
from __future__ import annotations

import itertools
import os
from typing import Any, Iterator, Sequence, overload

import msgpack
import zstandard

from detrun.errors import TraceError
from detrun.trace import registry
from detrun.trace.format import (
    DECLARE_KIND,
    END,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_DECOMPRESSED_BYTES,
    MAX_EVENTS,
    MAX_HELD_EVENTS,
    MAX_HELD_STEP_EVENTS,
    MAX_WINDOW_BYTES,
    ZSTD_MAGIC,
    make_unpacker,
)
from detrun.trace.schema import SchemaError

READ_BYTES = 1 << 16
# zstd input is fed in small pieces: one piece can expand at most ~32,000-fold (a run-length
# block), so no single call returns more than about 16 MiB however the file was made.
FEED_BYTES = 512
SLICE_BYTES = 1 << 18  # decompressed bytes handed to the unpacker at a time
# Exceptions that undecodable input raises from msgpack, zstandard or the codecs.
_DECODE_ERRORS = (msgpack.UnpackException, ValueError, TypeError, OverflowError, RecursionError, zstandard.ZstdError)


class _Truncated(Exception):
    """The byte stream stops inside a zstd frame or a msgpack object."""


def _decompressed_chunks(path: str, limit: int = MAX_DECOMPRESSED_BYTES) -> Iterator[bytes]:
    """Yield the decompressed bytes of every zstd frame in the file, raising on damage or excess."""
    with open(path, "rb") as f:
        if f.read(4) != ZSTD_MAGIC:
            raise TraceError(f"{path} is not a detrun trace (not zstd-compressed)")
        f.seek(0)
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES)
        decompressor: Any = None  # None between frames
        block, offset = b"", 0
        consumed = produced = 0
        while True:
            if len(block) - offset < FEED_BYTES:
                block, offset = block[offset:] + f.read(READ_BYTES), 0
            if offset >= len(block):
                break
            if decompressor is None:
                # detrun writes only zstd frames back to back: skippable frames or other bytes
                # between them would be a place to hide a payload, so they make the file corrupt.
                if block[offset:offset + 4] != ZSTD_MAGIC:
                    raise TraceError(f"{path} is corrupt (bytes at offset {consumed} are not a zstd frame "
                                     "that detrun writes)")
                decompressor = dctx.decompressobj()
            piece = block[offset:offset + FEED_BYTES]
            offset += len(piece)
            consumed += len(piece)
            try:
                out = decompressor.decompress(piece)
            except zstandard.ZstdError as exc:
                raise TraceError(f"{path} is corrupt ({_one_line(exc)})") from None
            # Handed on in slices, each checked first, so a refusal comes before the consumer has
            # decoded more than a slice past the limit.
            for start in range(0, len(out), SLICE_BYTES):
                part = out[start:start + SLICE_BYTES]
                produced += len(part)
                if produced > limit:
                    raise TraceError(f"{path} is refused: {consumed:,} bytes of it decompress to more than "
                                     f"{limit >> 20} MiB (a damaged or hostile file)")
                yield part
            if decompressor.eof:
                # The frame ended; what is left of this piece belongs to the next frame.
                rest = len(decompressor.unused_data)
                offset -= rest
                consumed -= rest
                decompressor = None
        if decompressor is not None:
            raise _Truncated()


def iter_objects(path: str) -> Iterator[Any]:
    """Yield every msgpack object of a trace in order; raise _Truncated or TraceError on damage."""
    unpacker = make_unpacker()
    fed = 0
    count = 0
    try:
        for chunk in _decompressed_chunks(path):
            unpacker.feed(chunk)
            fed += len(chunk)
            for obj in unpacker:
                count += 1
                yield obj
    except TraceError:
        raise
    except msgpack.BufferFull:
        raise TraceError(f"{path} is corrupt (record {count} is larger than the reader accepts)") from None
    except msgpack.StackError:
        raise TraceError(f"{path} is corrupt (record {count} is nested too deeply)") from None
    except _DECODE_ERRORS as exc:
        raise TraceError(f"{path} is corrupt (record {count} does not decode: {_one_line(exc)})") from None
    if unpacker.tell() != fed:
        raise _Truncated()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _check_header(path: str, header: Any) -> dict[str, Any]:
    """Validate the first object of a trace."""
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise TraceError(f"{path} is not a detrun trace (foreign header)")
    version = header.get("version")
    if type(version) is not int:
        raise TraceError(f"{path} is corrupt (header has no integer version)")
    if version > FORMAT_VERSION:
        raise TraceError(
            f"{path} was written by a newer detrun (trace format {version}; this detrun reads up to "
            f"{FORMAT_VERSION}): upgrade detrun"
        )
    try:
        registry.HEADER.check(header)
    except SchemaError as exc:
        raise TraceError(f"{path} is corrupt (header{_located(exc)})") from None
    return header


def _located(exc: SchemaError) -> str:
    return f"{exc.where}: {exc.problem}" if exc.where else f": {exc.problem}"


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


class _EventReader:
    """Walk a trace's objects once, checking each, and yield (role, kind, payload) for every event.

    After the walk `header` and `end` hold the validated header and end record.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.header: dict[str, Any] = {}
        self.end: dict[str, Any] | None = None
        self.counts: dict[str, dict[str, int]] = {}
        self.versions: dict[str, int] = {}  # kind name -> the payload version its declarations gave

    def _corrupt(self, number: int, what: str, problem: str) -> TraceError:
        return TraceError(f"{self.path} is corrupt (record {number}, {what}: {problem})")

    def events(self) -> Iterator[tuple[str, registry.EventKind, Any]]:
        """Yield (role, kind, payload) for every event, each payload checked; count them in `counts`."""
        path = self.path
        objects = iter_objects(path)
        try:
            try:
                self.header = _check_header(path, next(objects))
            except StopIteration:
                raise TraceError(f"{path} is truncated (empty stream)") from None
            role = "main"
            role_counts = self.counts.setdefault(role, {})
            kinds: dict[int, registry.EventKind] = {}
            total = 0
            for number, obj in enumerate(objects, start=1):
                # The hot path (one event) first: a list of two with a declared kind id.
                if type(obj) is list and len(obj) == 2:
                    kind_id, payload = obj
                    declared = kinds.get(kind_id) if type(kind_id) is int else None
                    if declared is not None and self.end is None:
                        index = role_counts.get(declared.name, 0)
                        role_counts[declared.name] = index + 1
                        total += 1
                        if total > MAX_EVENTS:
                            raise TraceError(f"{path} is refused: more than {MAX_EVENTS:,} events "
                                             "(a damaged or hostile file)")
                        try:
                            declared.schema.check(payload)
                        except SchemaError as exc:
                            raise self._corrupt(number, f"{declared.name} event #{index} of role {role}",
                                                str(exc)) from None
                        yield role, declared, payload
                        continue
                if self.end is not None:
                    raise self._corrupt(number, "after the end record", "the trace goes on after its end")
                if type(obj) is dict:
                    try:
                        registry.SEGMENT_MARKER.check(obj)
                    except SchemaError as exc:
                        raise self._corrupt(number, "a segment marker", str(exc)) from None
                    role = obj["segment"]
                    role_counts = self.counts.setdefault(role, {})
                    kinds = {}
                    continue
                if type(obj) is not list or len(obj) != 2 or type(obj[0]) is not int:
                    raise self._corrupt(number, f"in role {role}", "not an event [kind_id, payload]")
                kind_id, payload = obj
                if kind_id == DECLARE_KIND:
                    declared = self._declared(number, role, payload, kinds)
                    kinds[payload[0]] = declared
                elif kind_id == END:
                    try:
                        registry.END_RECORD.check(payload)
                    except SchemaError as exc:
                        raise self._corrupt(number, "the end record", str(exc)) from None
                    self.end = payload
                else:
                    raise self._corrupt(number, f"in role {role}", f"undeclared event kind {kind_id}")
        except _Truncated:
            raise TraceError(f"{path} is truncated (the file ends mid-record; was it copied partially?)") from None

    def _declared(self, number: int, role: str, payload: Any,
                  kinds: dict[int, registry.EventKind]) -> registry.EventKind:
        """Check a kind declaration and return the registry entry it names."""
        try:
            registry.DECLARATION.check(payload)
        except SchemaError as exc:
            raise self._corrupt(number, f"a kind declaration in role {role}", str(exc)) from None
        kind_id, name = payload[0], payload[1]
        declared = registry.kind(name)
        if declared is None:
            raise self._corrupt(number, f"a kind declaration in role {role}", f"unknown event kind {name[:64]!r}")
        version = payload[2] if len(payload) == 3 else 1
        if version > declared.version:
            raise TraceError(f"{self.path} was written by a newer detrun ({name} events of version {version}; "
                             f"this detrun reads up to {declared.version}): upgrade detrun")
        self.versions[name] = max(version, self.versions.get(name, 0))
        previous = kinds.get(kind_id)
        if previous is not None and previous.name != name:
            raise self._corrupt(number, f"a kind declaration in role {role}",
                                f"kind id {kind_id} declared again as {name!r} (was {previous.name!r})")
        return declared


_RECENT = 256  # how many of the last payloads read a StreamedEvents keeps
_READ_AHEAD = 32  # how many payloads past the one asked for a StreamedEvents reads (fewer than _RECENT - 64)


class StreamedEvents(Sequence[Any]):
    """The payloads of one streamed kind and role, decoded from the file only as they are asked for.

    Sequential indexing (what a replay cursor does) costs one decode per event, made _READ_AHEAD at
    a time, and constant memory; reading one of the last _RECENT indices again is free, going
    further back restarts the walk.
    """

    def __init__(self, trace: Trace, role: str, kind: str, count: int) -> None:
        self._trace = trace
        self._role = role
        self._kind = kind
        self._count = count
        self._walk: Iterator[Any] | None = None
        self._next = 0
        # The last payloads read, by index: a peek then a take read one twice, and a replay checking
        # batched device steps takes up to SYNC_EVERY (64) events behind the ones it peeked at.
        self._recent: dict[int, Any] = {}

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Any]:
        produced = 0
        for role, kind, payload in self._trace.reopen().events():
            if role == self._role and kind.name == self._kind:
                produced += 1
                yield payload
        if produced != self._count:
            raise TraceError(f"{self._trace.path} changed while it was being replayed")

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return list(itertools.islice(iter(self), *index.indices(self._count)))
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(index)
        if index in self._recent:
            return self._recent[index]
        if self._walk is None or index < self._next:
            self._walk, self._next = iter(self), 0
            self._recent.clear()
        # Read up to _READ_AHEAD past the index in one go: a replay asks for one event a step, and
        # each resumption of the walk is costly right after the step's own work.
        until = min(index + _READ_AHEAD, self._count - 1)
        while self._next <= until:
            self._recent[self._next] = next(self._walk)
            self._recent.pop(self._next - _RECENT, None)
            self._next += 1
        return self._recent[index]


class Trace:
    """A checked trace: the header, the events by process role and kind, and the end record.

    `events` holds the payloads of every kind except the streamed per-step ones, which `of()`
    returns as a list when the first pass kept them (a trace of at most MAX_HELD_STEP_EVENTS), else
    as a StreamedEvents read lazily from the file; `counts` has every kind.
    """

    def __init__(self, path: str, header: dict[str, Any], events: dict[str, dict[str, list[Any]]],
                 end: dict[str, Any] | None, size: int, counts: dict[str, dict[str, int]] | None = None,
                 identity: tuple[int, ...] | None = None,
                 step_events: dict[str, dict[str, list[Any]]] | None = None,
                 versions: dict[str, int] | None = None) -> None:
        self.path = path
        self.header = header
        self.events = events
        self.end = end
        self.size = size
        self.counts = counts if counts is not None else {
            role: {kind: len(payloads) for kind, payloads in kinds.items()} for role, kinds in events.items()}
        self._identity = identity
        # The per-step kinds' payloads, when the first pass kept them (MAX_HELD_STEP_EVENTS).
        self._step_events = step_events or {}
        self._streams: dict[tuple[str, str], StreamedEvents] = {}
        self._of: dict[tuple[str, str], Sequence[Any]] = {}
        self._versions = versions or {}

    def version(self, kind: str) -> int:
        """Return the payload version of a kind's events here (this detrun's own for a kind the trace lacks)."""
        return self._versions.get(kind) or registry.current_version(kind)

    def declared_versions(self) -> dict[str, int]:
        """Return the payload version of each kind the trace declares."""
        return dict(self._versions)

    @property
    def complete(self) -> bool:
        """Return whether the recorded run finished normally (a killed run's trace is incomplete)."""
        return self.end is not None and bool(self.end.get("complete", False))

    def of(self, kind: str, role: str = "main") -> Sequence[Any]:
        """Return the payloads of one kind for one process role, in recorded order."""
        # Asked several times a step on replay (peek, take, other sources' cursors): answered once.
        known = self._of.get((role, kind))
        if known is not None:
            return known
        known = self._of[(role, kind)] = self._lookup(kind, role)
        return known

    def _lookup(self, kind: str, role: str) -> Sequence[Any]:
        held = self.events.get(role, {}).get(kind)
        if held is None:
            held = self._step_events.get(role, {}).get(kind)
        if held is not None:
            return held
        count = self.counts.get(role, {}).get(kind, 0)
        if not count or self._identity is None:
            return []
        stream = self._streams.get((role, kind))
        if stream is None:
            stream = self._streams[(role, kind)] = StreamedEvents(self, role, kind, count)
        return stream

    def of_process(self, role: str) -> Trace:
        """Return this trace as one process of a launched command sees it: that role's end record as the end.

        A rank's segment ends with its `process.end` event; without one (the rank died) the process's
        recording is incomplete, whatever the command did.
        """
        ends = self.events.get(role, {}).get("process.end") or []
        end = dict(ends[-1]) if ends else {"complete": False, "reason": f"the process {role} never finished"}
        if not self.complete:
            end["complete"] = False
        return Trace(self.path, self.header, self.events, end, self.size, self.counts, self._identity,
                     self._step_events, self._versions)

    def process_keys(self) -> dict[str, dict[str, Any]]:
        """Return the recorded processes of a launched command (ranks): role -> its `process` event."""
        return {role: kinds["process"][0] for role, kinds in self.events.items() if kinds.get("process")}

    def count(self) -> int:
        """Return the number of events in all roles."""
        return sum(sum(kinds.values()) for kinds in self.counts.values())

    def reopen(self) -> _EventReader:
        """Return a reader over the same file, refusing one that changed since it was checked."""
        if self._identity is None or _identity(self.path) != self._identity:
            raise TraceError(f"{self.path} changed while it was being replayed")
        return _EventReader(self.path)


def _identity(path: str) -> tuple[int, ...]:
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def read_trace(path: str) -> Trace:
    """Check a whole trace and return it; raise TraceError on any damage, including a missing end record."""
    _open_check(path)
    identity = _identity(path)
    reader = _EventReader(path)
    events: dict[str, dict[str, list[Any]]] = {"main": {}}
    step_events: dict[str, dict[str, list[Any]]] | None = {}
    held = held_steps = 0
    for role, kind, payload in reader.events():
        if kind.streamed:
            if step_events is not None:
                held_steps += 1
                if held_steps > MAX_HELD_STEP_EVENTS:
                    step_events = None  # a long run: its steps are read again as the replay reaches them
                else:
                    step_events.setdefault(role, {}).setdefault(kind.name, []).append(payload)
            continue
        held += 1
        if held > MAX_HELD_EVENTS:
            raise TraceError(f"{path} is refused: more than {MAX_HELD_EVENTS:,} events besides the per-step ones "
                             "(a damaged or hostile file)")
        events.setdefault(role, {}).setdefault(kind.name, []).append(payload)
    if reader.end is None:
        raise TraceError(f"{path} is truncated (no end record)")
    if identity != _identity(path):
        raise TraceError(f"{path} changed while it was being read")
    counts = {role: kinds for role, kinds in reader.counts.items() if kinds}
    return Trace(path, reader.header, events, reader.end, identity[2] if identity else 0, counts, identity,
                 step_events, reader.versions)


def salvage_objects(path: str) -> list[Any]:
    """Return every object that decodes from a damaged trace's prefix (for a killed recording)."""
    salvaged: list[Any] = []
    try:
        for obj in iter_objects(path):
            salvaged.append(obj)
    except (_Truncated, TraceError):
        pass
    return salvaged
