"""Write a trace: a header, events in flushed chunks, then an end record."""
from __future__ import annotations

import errno
import os
import time
from typing import Any, BinaryIO

import zstandard

from detrun.errors import OutputExists
from detrun.trace.format import (
    DECLARE_KIND,
    END,
    FIRST_USER_KIND,
    FORMAT_NAME,
    FORMAT_VERSION,
    make_packer,
)
from detrun.trace import registry

# A chunk is compressed and flushed to disk once it holds this many bytes or is this old, so a
# killed run loses at most about one chunk while a step still costs only a bytearray append.
CHUNK_BYTES = 64 * 1024
CHUNK_SECONDS = 1.0
# zstd's default. Level 6 made traces 2-7% smaller at three times the CPU: about 15 µs per batch of a
# DataLoader-bound epoch (the sampler's shuffled indices hardly compress), some 1% of its time.
ZSTD_LEVEL = 3


class TraceWriter:
    """Append events to a trace file; the main process's writer also merges child segments."""

    def __init__(self, path: str, header: dict[str, Any] | None = None, *, segment: str | None = None) -> None:
        self.path = path
        self._file: BinaryIO = open(path, "wb")
        self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).stream_writer(self._file, closefd=False)
        self._packer = make_packer()
        self._buffer = bytearray()
        self._kind_ids: dict[str, int] = {}
        self._counts: dict[str, int] = {}
        self._last_flush = time.monotonic()
        self._pid = os.getpid()
        self.closed = False
        self._role = segment or "main"
        if segment is None:
            assert header is not None, "the main trace needs a header"
            self._buffer += self._packer.pack({"format": FORMAT_NAME, "version": FORMAT_VERSION, **header})
        else:
            # A segment is the event stream of one child process (a DataLoader worker, a rank).
            self._buffer += self._packer.pack({"segment": segment})
        self.flush()

    @property
    def counts(self) -> dict[str, int]:
        """Return how many events of each kind were written."""
        return dict(self._counts)

    def event(self, kind: str, payload: Any) -> None:
        """Append one event; compress and flush when the chunk is full."""
        kind_id = self._kind_ids.get(kind)
        if kind_id is None:
            kind_id = self._declare(kind)
        self._buffer += self._packer.pack([kind_id, payload])
        self._counts[kind] = self._counts.get(kind, 0) + 1
        if len(self._buffer) >= CHUNK_BYTES:
            self.flush()

    def events(self, kind: str, payloads: list[Any]) -> None:
        """Append events of one kind, in order: event() for a batch, with its lookups made once."""
        kind_id = self._kind_ids.get(kind)
        if kind_id is None:
            kind_id = self._declare(kind)
        pack, buffer = self._packer.pack, self._buffer
        for payload in payloads:
            buffer += pack([kind_id, payload])
        self._counts[kind] = self._counts.get(kind, 0) + len(payloads)
        if len(buffer) >= CHUNK_BYTES:
            self.flush()

    def _declare(self, kind: str) -> int:
        """Give a kind its id in this trace, declared before its first event; return the id."""
        kind_id = self._kind_ids[kind] = len(self._kind_ids) + FIRST_USER_KIND
        version = registry.current_version(kind)
        # Version 1 is implied; a later one is written, so older readers refuse the events they would misread.
        self._buffer += self._packer.pack([DECLARE_KIND, [kind_id, kind] if version == 1 else [kind_id, kind, version]])
        return kind_id

    def maybe_flush(self) -> None:
        """Flush if the pending chunk is older than CHUNK_SECONDS (called from cheap periodic points)."""
        if self._buffer and time.monotonic() - self._last_flush >= CHUNK_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Compress the pending chunk and push it to the OS, decodable on its own."""
        if self.closed or os.getpid() != self._pid:
            return  # a forked child's copy of this writer must never touch the parent's file
        if self._buffer:
            self._zstd.write(bytes(self._buffer))
            self._buffer.clear()
        self._zstd.flush(zstandard.FLUSH_BLOCK)
        self._file.flush()
        self._last_flush = time.monotonic()

    def _end_frame(self) -> None:
        """Finish the current zstd frame so raw bytes can follow it."""
        self.flush()
        self._zstd.flush(zstandard.FLUSH_FRAME)
        self._file.flush()

    def append_segments(self, segment_paths: list[str]) -> None:
        """Copy finished child segments into this trace as whole zstd frames, then delete them."""
        self._end_frame()
        for segment_path in segment_paths:
            with open(segment_path, "rb") as segment:
                while chunk := segment.read(1 << 20):
                    self._file.write(chunk)
            os.unlink(segment_path)
        self._file.flush()
        # Events after the segments belong to this writer's process again.
        self._kind_ids.clear()
        self._buffer += self._packer.pack({"segment": self._role})

    def close(self, end: dict[str, Any] | None = None) -> int:
        """Write the end record (main trace only), finish the stream, and return the file size."""
        if self.closed or os.getpid() != self._pid:
            return os.path.getsize(self.path)
        if end is not None:
            self._buffer += self._packer.pack([END, {**end, "counts": self.counts}])
        self._end_frame()
        self._zstd.close()
        self._file.close()
        self.closed = True
        return os.path.getsize(self.path)


def write_objects(path: str, objects: list[Any]) -> None:
    """Write already-decoded trace objects verbatim as a new single-frame trace (used to salvage)."""
    packer = make_packer()
    with open(path, "wb") as f, zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).stream_writer(f) as z:
        for obj in objects:
            z.write(packer.pack(obj))


def publish(temporary: str, final: str, *, force: bool = False) -> str:
    """Give a finished trace its final name without overwriting anything unless `force`; return the name.

    The trace is written in detrun's private scratch directory, often on another file system than
    the output, so it is first copied to a hidden name beside the output (the script has ended by
    now; nothing records that listing), then hard-linked to the final name: link() fails if the name
    exists, so of two recordings racing for one output the second loses atomically and its trace
    is kept under a name of its own, reported in the OutputExists it raises. `temporary` is consumed.
    """
    staged = temporary
    try:
        if _device(temporary) != _device(os.path.dirname(os.path.abspath(final))):
            staged = _copy_beside(temporary, final)
            os.unlink(temporary)
        if force:
            os.replace(staged, final)
            return final
        if _link_exclusive(staged, final):
            return final
        kept = _keep_beside(staged, final)
        raise OutputExists(f"{final} was created by another run while this one was recording; this recording "
                           f"is kept as {kept} (pass --force to overwrite instead)")
    except OSError as exc:  # the output directory vanished, the disk is full, ...
        raise OutputExists(f"cannot write {final}: {exc.strerror or exc}") from None
    finally:
        for leftover in {staged, temporary}:
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass


def _device(path: str) -> int:
    return os.stat(path).st_dev


def _copy_beside(source: str, final: str) -> str:
    """Copy a file to a new hidden name in the final name's directory and return that name."""
    directory, name = os.path.split(os.path.abspath(final))
    for attempt in range(1000):
        staged = os.path.join(directory, f".{name}.{os.getpid()}.{attempt}.partial")
        try:
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        import shutil  # here, on this rare path: a replay's launcher imports the trace package (start-up)

        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        except BaseException:
            os.unlink(staged)
            raise
        return staged
    raise OutputExists(f"cannot write {final}: too many leftover temporary files beside it")


def _link_exclusive(source: str, final: str) -> bool:
    """Create `final` as `source`'s content if no such name exists; return False if it exists."""
    try:
        os.link(source, final)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV, errno.ENOSYS):
            raise
    # A file system without hard links: O_EXCL still refuses to clobber, but a reader may see the
    # file before the copy completes.
    try:
        fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    import shutil

    with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
        shutil.copyfileobj(src, out, 1 << 20)
    return True


def _keep_beside(source: str, final: str) -> str:
    """Link `source` to a fresh name like trace.<pid>.zst beside `final`, and return that name."""
    directory, name = os.path.split(final)
    stem, dot, extension = name.rpartition(".") if "." in name.lstrip(".") else (name, "", "")
    for attempt in range(1000):
        tag = f"{os.getpid()}" if attempt == 0 else f"{os.getpid()}-{attempt}"
        candidate = os.path.join(directory, f"{stem}.{tag}{dot}{extension}")
        if _link_exclusive(source, candidate):
            return candidate
    raise OutputExists(f"{final} exists and no free name beside it was found; pass --force to overwrite it")
