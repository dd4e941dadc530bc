"""Constants and value codecs of the trace format, shared by the writer and the reader.

A trace is one zstd stream (possibly several frames) of msgpack objects:

1. the header, a map with `format: "detrun-trace"` and an integer `version`;
2. events, each a two-element array `[kind_id, payload]`; kind ids are declared in the stream by
   `[DECLARE_KIND, [kind_id, name]]` before their first use (the names and payload schemas are in
   detrun.trace.registry), so a step costs a one-byte kind; a segment marker `{"segment": role}`
   starts the events of a child process (a DataLoader worker), whose kind ids are its own;
3. last, `[END, {...}]`: exit status, event counts, steps, `complete`.

Payloads are plain msgpack data. Integers outside msgpack's 64-bit range travel as ExtType
`EXT_BIGINT` (two's complement, big-endian). Nothing is ever pickled.
"""
from __future__ import annotations

import msgpack

FORMAT_NAME = "detrun-trace"
FORMAT_VERSION = 1
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

DECLARE_KIND = 0
END = 1
FIRST_USER_KIND = 2

EXT_BIGINT = 1

# Limits that keep a hostile or damaged file from exhausting memory or time; a genuine trace of a
# million steps decompresses to about 30 MB and holds about a million events.
MAX_WINDOW_BYTES = 1 << 24  # zstd window (the decoder's memory); the writer's level 3 uses 2 MiB
MAX_DECOMPRESSED_BYTES = 1 << 30  # the whole trace, decompressed
# All roles and kinds together: 10 million steps' worth, and what bounds the time a flood of tiny
# events can take (a few microseconds each). There is no cap on the compression ratio: a genuine
# run of identical steps (frozen weights, constant data) compresses as well as a hostile flood.
MAX_EVENTS = 10_000_000
MAX_HELD_EVENTS = 4_000_000  # events of the kinds replay keeps in memory (all but the per-step ones)
# Per-step events kept from the first pass when a trace has no more than this (about 10 MB): a
# replay then reads each step's event from memory instead of decoding it again at the step. A
# longer run's are read again from the file as the replay reaches them, in constant memory.
MAX_HELD_STEP_EVENTS = 1 << 16
MAX_BLOB_BYTES = 1 << 24  # one str or bytes value
MAX_CONTAINER_LEN = 1 << 21  # one list or map
MAX_BIGINT_BYTES = 1025  # 8,200 bits: every int still converts to str (Python's 4,300-digit limit)
MAX_RECORD_BYTES = 1 << 25  # one undecoded record waiting for its end in the unpacker


def _default(obj: object) -> object:
    """Encode the few non-msgpack values a trace may hold."""
    if isinstance(obj, int):  # only reached for ints beyond 64 bits
        length = (obj.bit_length() + 8) // 8
        return msgpack.ExtType(EXT_BIGINT, obj.to_bytes(length, "big", signed=True))
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a trace")


def _ext_hook(code: int, data: bytes) -> object:
    """Decode ExtTypes; unknown ones stay opaque rather than being executed or trusted."""
    if code == EXT_BIGINT:
        if len(data) > MAX_BIGINT_BYTES:
            raise ValueError(f"an integer of {len(data)} bytes (at most {MAX_BIGINT_BYTES})")
        return int.from_bytes(data, "big", signed=True)
    return msgpack.ExtType(code, data)


def make_packer() -> msgpack.Packer:
    """Return the packer every trace writer uses."""
    return msgpack.Packer(default=_default, use_bin_type=True)


def make_unpacker() -> msgpack.Unpacker:
    """Return an incremental unpacker with limits that keep a hostile file from exhausting memory."""
    return msgpack.Unpacker(
        raw=False,
        use_list=True,
        strict_map_key=True,  # str or bytes keys only: a list key can never reach a dict lookup
        ext_hook=_ext_hook,
        max_buffer_size=MAX_RECORD_BYTES,
        max_str_len=MAX_BLOB_BYTES,
        max_bin_len=MAX_BLOB_BYTES,
        max_array_len=MAX_CONTAINER_LEN,
        max_map_len=MAX_CONTAINER_LEN,
        max_ext_len=MAX_BIGINT_BYTES,
    )


_WIDTH_TYPECODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


def pack_indices(values: list[int]) -> tuple[int, bytes]:
    """Pack non-negative ints into the narrowest fixed width (1, 2, 4 or 8 bytes, little-endian)."""
    import array
    import sys

    top = max(values, default=0)
    width = 1 if top < 1 << 8 else 2 if top < 1 << 16 else 4 if top < 1 << 32 else 8
    packed = array.array(_WIDTH_TYPECODES[width], values)
    if sys.byteorder == "big":
        packed.byteswap()
    return width, packed.tobytes()


def unpack_indices(width: int, data: bytes) -> list[int]:
    """Invert pack_indices."""
    import array
    import sys

    unpacked = array.array(_WIDTH_TYPECODES[width])
    unpacked.frombytes(data)
    if sys.byteorder == "big":
        unpacked.byteswap()
    return unpacked.tolist()
