"""The bytes of an `op.digests` event: the ops one optimizer step ran and a 32-bit digest of each output.

One event per captured step:

    {"step": k, "strings": [new op keys], "ops": packed ids, "digests": packed u32[, "truncated": n]}
    or {"step": k, "skipped": reason}

An op key is `aten::name.overload@device` ("aten::add.Tensor@cpu"). Keys go into a string table
that grows across the events (kernel_codec's `StringTable`: each event carries only the keys not
seen before), so a step costs about one byte of id and four of digest per op. Ids and digests are
packed by `detrun.trace.format.pack_indices` as [width, bytes].

`detrun explain`'s replays write the same payloads to a scratch file, with one more field,
`"sites": packed ids` into the same table (the user's `file:line` of each op), which a recording
never holds: taking the call site of every op costs too much to do while recording.
The capture is `detrun.engine.sources.op_digests`; the comparison is `detrun.explain`'s.
"""
from __future__ import annotations

from typing import Any, Iterable, NamedTuple, Sequence

from detrun.trace.format import pack_indices, unpack_indices
from detrun.trace.kernel_codec import StringTable
from detrun.trace.kernel_codec import first_difference as first_element_difference

MAX_OPS = 1_000_000  # per step; beyond this the list is cut (and says so)
MASK32 = (1 << 32) - 1


def op_key(name: str, device: str) -> str:
    """Return the key of an op on a device: 'aten::add.Tensor@cpu'."""
    return f"{name}@{device}"


def split_key(key: str) -> tuple[str, str]:
    """Return (op name, device) of an op key; the device is '' for a key without one."""
    name, _, device = key.rpartition("@")
    return (name, device) if name else (key, "")


def fold64(value: int) -> int:
    """Fold a 64-bit word sum into the 32-bit digest an event stores."""
    value &= (1 << 64) - 1
    return (value ^ (value >> 32)) & MASK32


# A NamedTuple, not a dataclass: a source imports this module at start-up, and dataclasses brings inspect.
class OpStep(NamedTuple):
    """The ops of one optimizer step in the order they ran, the digest of each one's outputs, and where."""

    step: int
    ops: list[str]  # op keys
    digests: list[int]
    sites: list[str] | None = None  # `file:line` per op (explain's own captures only)
    skipped: str | None = None
    truncated: int = 0


def _pack(values: Sequence[int]) -> list[Any]:
    width, data = pack_indices(list(values))
    return [width, data]


def _unpack(packed: Any) -> list[int]:
    if isinstance(packed, (list, tuple)) and len(packed) == 2 and isinstance(packed[1], (bytes, bytearray)):
        return unpack_indices(int(packed[0]), bytes(packed[1]))
    return [int(i) for i in packed or []]


def encode_step(table: StringTable, step: int, ops: Sequence[str], digests: Sequence[int],
                sites: Sequence[str] | None = None, truncated: int = 0) -> dict[str, Any]:
    """Return the payload for one step's ops and digests (and call sites, for explain's scratch files)."""
    names = list(ops) + (list(sites) if sites is not None else [])
    new, ids = table.encode(names)
    payload: dict[str, Any] = {"step": step, "strings": new, "ops": _pack(ids[:len(ops)]),
                               "digests": _pack([d & MASK32 for d in digests])}
    if sites is not None:
        payload["sites"] = _pack(ids[len(ops):])
    if truncated:
        payload["truncated"] = truncated
    return payload


def skipped_step(step: int, reason: str) -> dict[str, Any]:
    """Return the payload for a step that could not be captured."""
    return {"step": step, "skipped": reason}


class StepDecoder:
    """Decode payloads one at a time, in recorded order (the string table grows with them)."""

    def __init__(self) -> None:
        self._table = StringTable()

    def decode(self, payload: Any) -> OpStep | None:
        """Return the step a payload holds, or None for something that is not a payload."""
        if not isinstance(payload, dict):
            return None
        step = int(payload.get("step", 0))
        if payload.get("skipped") is not None:
            return OpStep(step, [], [], skipped=str(payload["skipped"]))
        self._table.extend(payload.get("strings", []))
        ops = self._table.decode(_unpack(payload.get("ops")))
        digests = _unpack(payload.get("digests"))
        if len(digests) != len(ops):
            raise ValueError(f"step {step} has {len(ops)} ops but {len(digests)} digests")
        sites = self._table.decode(_unpack(payload["sites"])) if "sites" in payload else None
        if sites is not None and len(sites) != len(ops):
            raise ValueError(f"step {step} has {len(ops)} ops but {len(sites)} call sites")
        return OpStep(step, ops, digests, sites, truncated=int(payload.get("truncated", 0)))


def decode_steps(payloads: Iterable[Any]) -> list[OpStep]:
    """Return the steps of a sequence of payloads, in order."""
    decoder = StepDecoder()
    return [step for step in (decoder.decode(p) for p in payloads) if step is not None]


def first_difference(recorded: OpStep, got: OpStep) -> int | None:
    """Return the index of the first op whose key or digest differs (or where the shorter step ends); None if equal."""
    return first_element_difference(list(zip(recorded.ops, recorded.digests)), list(zip(got.ops, got.digests)))


def describe_op(key: str) -> str:
    """Return 'aten::add.Tensor (cpu)' for an op key."""
    name, device = split_key(key)
    return f"{name} ({device})" if device else name


def describe_difference(recorded: OpStep, got: OpStep, index: int, recorded_name: str = "the recording",
                        with_site: bool = True) -> str:
    """Return what differs at op `index` of a step between a capture and `recorded_name`'s."""
    number, step = index + 1, got.step
    site = f" at {got.sites[index]}" if with_site and got.sites is not None and index < len(got.sites) else ""
    if index < len(recorded.ops) and index < len(got.ops):
        if recorded.ops[index] != got.ops[index]:
            return (f"op #{number} of step {step} is {describe_op(got.ops[index])}{site}, but {recorded_name} has "
                    f"{describe_op(recorded.ops[index])} there (the ops ran in another order)")
        return (f"the output of op #{number} of step {step}, {describe_op(got.ops[index])}{site}, differs from "
                f"{recorded_name}'s (digest {recorded.digests[index]:08x} there, {got.digests[index]:08x} here)")
    if index < len(recorded.ops):
        return (f"step {step} ran {len(got.ops)} ops, {recorded_name} {len(recorded.ops)}; the first missing is "
                f"{describe_op(recorded.ops[index])}")
    return (f"step {step} ran {len(got.ops)} ops, {recorded_name} {len(recorded.ops)}; the first extra is "
            f"{describe_op(got.ops[index])}{site}")
