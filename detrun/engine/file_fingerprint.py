"""Fingerprints of files a run reads, and which paths are the program's own data at all.

A fingerprint is the file's size, mtime and a sha256 digest. Files up to FULL_HASH_LIMIT are hashed
whole; a larger one (a dataset shard) is sampled so that recording it costs a few megabytes of
reading, not a second pass over the data: its size, the first and last MB in full and SAMPLE_BLOCKS
blocks at fixed offsets between them. A sampled digest catches a replaced, truncated, appended or
regenerated file, not a single byte flipped in an unsampled block; `sampled` says which it is.

Small text files also get one crc32 per line, so that a replay can say how many lines changed.
Pure: no detrun state, no session.
"""
from __future__ import annotations

import functools
import os
import site
import struct
import sys
import sysconfig
import zlib
from typing import Any, NamedTuple

FULL_HASH_LIMIT = 32 << 20  # hash whole files up to 32 MB (about 15 ms at memory speed)
EDGE = 1 << 20  # the first and last MB of a sampled file, hashed in full
SAMPLE_BLOCKS = 16
SAMPLE_BLOCK = 64 << 10
LINE_CRC_LIMIT = 4 << 20  # per-line crcs only for files up to 4 MB
MAX_LINES = 100_000
_CHUNK = 1 << 20


class Fingerprint(NamedTuple):
    """What a run saw of a file."""

    size: int
    mtime_ns: int
    sha256: str  # of the whole file, or of the sample when `sampled`
    sampled: bool
    lines: bytes | None  # little-endian crc32 per line (small text files only)


def _sha256() -> Any:
    """Return a new sha256 hash object, importing hashlib (OpenSSL, ~2 ms) on the first file, not at start-up."""
    import hashlib

    return hashlib.sha256()


def fingerprint(path: str) -> Fingerprint:
    """Return the fingerprint of a regular file (raises OSError as open() would)."""
    with open(path, "rb", buffering=0) as handle:
        stat = os.fstat(handle.fileno())
        size = stat.st_size
        digest = _sha256()
        if size <= FULL_HASH_LIMIT:
            data = _read_all(handle)
            digest.update(data)
            return Fingerprint(size, stat.st_mtime_ns, digest.hexdigest(), False, line_crcs(data))
        digest.update(struct.pack("<Q", size))
        for offset, length in sample_ranges(size):
            handle.seek(offset)
            digest.update(handle.read(length))
        return Fingerprint(size, stat.st_mtime_ns, digest.hexdigest(), True, None)


def sample_ranges(size: int) -> list[tuple[int, int]]:
    """Return the (offset, length) ranges a sampled fingerprint reads, at offsets fixed by the size alone."""
    ranges = [(0, EDGE)]
    inner = size - 2 * EDGE
    for index in range(1, SAMPLE_BLOCKS + 1):
        ranges.append((EDGE + inner * index // (SAMPLE_BLOCKS + 1), SAMPLE_BLOCK))
    ranges.append((size - EDGE, EDGE))
    return ranges


def full_sha256(path: str) -> str:
    """Return the sha256 of a whole file."""
    digest = _sha256()
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_all(handle: object) -> bytes:
    chunks = []
    while chunk := handle.read(_CHUNK):  # type: ignore[attr-defined]
        chunks.append(chunk)
    return b"".join(chunks)


def line_crcs(data: bytes) -> bytes | None:
    """Return the packed crc32 of each line of a text file, or None for binary or large files."""
    if len(data) > LINE_CRC_LIMIT or b"\0" in data[:8192]:
        return None
    lines = data.splitlines()
    if len(lines) > MAX_LINES:
        return None
    return struct.pack(f"<{len(lines)}I", *(zlib.crc32(line) for line in lines))


def lines_differing(recorded: bytes, current: bytes) -> int:
    """Return how many lines were changed, added or removed between two packed crc lists."""
    old = struct.unpack(f"<{len(recorded) // 4}I", recorded)
    new = struct.unpack(f"<{len(current) // 4}I", current)
    if len(old) == len(new):
        return sum(a != b for a, b in zip(old, new))
    import difflib  # start-up: only a changed input file needs it

    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    same = sum(block.size for block in matcher.get_matching_blocks())
    return max(len(old), len(new)) - same


def describe_change(path: str, recorded_sha: str, current: Fingerprint, recorded_lines: bytes | None) -> str:
    """Return `data/train.csv changed since the recording (sha256 3f2a… → 9c01…, 1 line differs)`."""
    detail = f"sha256 {recorded_sha[:4]}… → {current.sha256[:4]}…"
    if recorded_lines is not None and current.lines is not None:
        count = lines_differing(recorded_lines, current.lines)
        if count:
            detail += f", {count} line{'s' if count != 1 else ''} differ{'s' if count == 1 else ''}"
    return f"{path} changed since the recording ({detail})"


def trace_path(absolute: str, cwd: str) -> str:
    """Return how a trace names a file: relative to the run's directory when under it, else absolute."""
    if absolute == cwd or absolute.startswith(cwd.rstrip(os.sep) + os.sep):
        return os.path.relpath(absolute, cwd)
    return absolute


@functools.cache  # the sources each ask at start-up; the answer cannot change within a process
def library_prefixes() -> tuple[str, ...]:
    """Return the directories whose files are the interpreter's, the libraries' and the system's, never data.

    /etc is the system's configuration (time zone, MIME types, os-release) that libraries read.
    """
    paths = sysconfig.get_paths()
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, paths["stdlib"], paths["purelib"], paths["platlib"],
             os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "/proc", "/sys", "/dev", "/etc"}
    try:
        roots.update(site.getsitepackages())
        roots.add(site.getusersitepackages())
    except AttributeError:  # a virtualenv's old site.py
        pass
    expanded = set()
    for root in roots:
        if root:
            expanded.add(os.path.abspath(root))
            expanded.add(os.path.realpath(root))
    return tuple(sorted(p.rstrip(os.sep) + os.sep for p in expanded))


SKIPPED_SUFFIXES = (".py", ".pyc", ".pyi", ".so", ".pth", ".dist-info")


def program_file(path: Any, ignored: tuple[str, ...], own_files: set[str]) -> str | None:
    """Return the absolute path of a file the program opened; None for a library's, detrun's or an untraceable name."""
    absolute = os.path.abspath(os.fsdecode(os.fspath(path)))
    if not absolute.isprintable() or len(absolute) > 4000:
        return None  # a name a trace cannot hold as text (undecodable bytes, control characters)
    if absolute.startswith(ignored) or absolute.endswith(SKIPPED_SUFFIXES) or absolute in own_files:
        return None
    return absolute


def detrun_paths(scratch_dir: str | None, trace_file: object) -> tuple[tuple[str, ...], set[str]]:
    """Return (the prefixes the file sources ignore, detrun's own files): libraries, scratch, trace, kept inputs."""
    own = [os.path.abspath(str(p)) for p in (scratch_dir, trace_file, trace_file and f"{trace_file}.inputs") if p]
    return library_prefixes() + tuple(p + os.sep for p in own), set(own)
