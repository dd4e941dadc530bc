"""The bytes of a `kernels` event: a growing string table and packed ids per optimizer step.

One event per captured step:

    {"step": k, "strings": [new names], "kernels": ids, "ops": ids[, "truncated": n]}
    or {"step": k, "skipped": reason}

Names go into a string table that grows across the events (each event carries only the names not
seen before), so a step costs about a byte or two per launch. Ids are packed by
`detrun.trace.format.pack_indices` as [width, bytes]; plain lists (older traces) still decode.
The capture that produces the launches is `detrun.engine.sources.cuda_kernels`.
"""
from __future__ import annotations

from typing import Any, Iterable, NamedTuple, Sequence

from detrun.trace.format import pack_indices, unpack_indices

MAX_LAUNCHES = 200_000  # per step; beyond this the list is cut (and says so)
_SHOWN = 140  # characters of a (templated) kernel name in a message


class StringTable:
    """Map strings to small ids, handing out only the strings each encoding adds."""

    def __init__(self) -> None:
        self.strings: list[str] = []
        self._ids: dict[str, int] = {}

    def encode(self, names: Iterable[str]) -> tuple[list[str], list[int]]:
        """Return (strings new to the table, the id of each name)."""
        new: list[str] = []
        ids: list[int] = []
        for name in names:
            index = self._ids.get(name)
            if index is None:
                index = self._ids[name] = len(self.strings)
                self.strings.append(name)
                new.append(name)
            ids.append(index)
        return new, ids

    def extend(self, new: Iterable[str]) -> None:
        """Add the strings an encoded event brought (decoder side)."""
        for name in new:
            self._ids.setdefault(name, len(self.strings))
            self.strings.append(name)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Return the strings for ids ('?' for an id the table does not have)."""
        return [self.strings[i] if 0 <= i < len(self.strings) else "?" for i in ids]


# A NamedTuple, not a dataclass: a source imports this module at start-up, and dataclasses brings inspect.
class StepKernels(NamedTuple):
    """The kernels one optimizer step launched, in launch order, with the op behind each."""

    step: int
    kernels: list[str]
    ops: list[str]
    skipped: str | None = None
    truncated: int = 0


def _pack(ids: list[int]) -> list[Any]:
    """Pack ids as [width, bytes]."""
    width, data = pack_indices(ids)
    return [width, data]


def _unpack(packed: Any) -> list[int]:
    """Unpack [width, bytes], or read a plain list of ids."""
    if isinstance(packed, list) and len(packed) == 2 and isinstance(packed[1], (bytes, bytearray)):
        return unpack_indices(int(packed[0]), bytes(packed[1]))
    return [int(i) for i in packed or []]


def encode_step(table: StringTable, step: int, launches: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Return the event payload for one step's (kernel, op) launches."""
    truncated = max(0, len(launches) - MAX_LAUNCHES)
    launches = launches[:MAX_LAUNCHES]
    new, ids = table.encode([k for k, _ in launches] + [o for _, o in launches])
    payload: dict[str, Any] = {"step": step, "strings": new, "kernels": _pack(ids[:len(launches)]),
                               "ops": _pack(ids[len(launches):])}
    if truncated:
        payload["truncated"] = truncated
    return payload


def skipped_step(step: int, reason: str) -> dict[str, Any]:
    """Return the event payload for a step that could not be captured."""
    return {"step": step, "skipped": reason}


def decode_steps(payloads: Iterable[Any]) -> list[StepKernels]:
    """Return the recorded steps of a trace's kernel events, in order."""
    table = StringTable()
    steps = []
    for payload in payloads:
        if not isinstance(payload, dict):
            continue
        step = int(payload.get("step", 0))
        if payload.get("skipped") is not None:
            steps.append(StepKernels(step, [], [], skipped=str(payload["skipped"])))
            continue
        table.extend(payload.get("strings", []))
        steps.append(StepKernels(step, table.decode(_unpack(payload.get("kernels"))),
                                 table.decode(_unpack(payload.get("ops"))), truncated=int(payload.get("truncated", 0))))
    return steps


def first_difference(recorded: Sequence[object], got: Sequence[object]) -> int | None:
    """Return the index of the first differing element (or where the shorter one ends); None if equal."""
    for index, (a, b) in enumerate(zip(recorded, got)):
        if a != b:
            return index
    return None if len(recorded) == len(got) else min(len(recorded), len(got))


def _short(name: str) -> str:
    """Cut a long (templated) kernel name for a message."""
    return name if len(name) <= _SHOWN else name[:_SHOWN - 1] + "…"


def describe_difference(recorded: StepKernels, got: StepKernels) -> str | None:
    """Return the divergence message for two captures of one step, or None if they match."""
    index = first_difference(recorded.kernels, got.kernels)
    if index is None:
        return None
    step = got.step
    if index < len(recorded.kernels) and index < len(got.kernels):
        return (f"CUDA kernel #{index + 1} of step {step} is '{_short(got.kernels[index])}' (launched by "
                f"{got.ops[index]}), but the recording has '{_short(recorded.kernels[index])}' (launched by "
                f"{recorded.ops[index]})")
    if index < len(recorded.kernels):
        return (f"step {step} launched {len(got.kernels)} CUDA kernels, the recording {len(recorded.kernels)}; the "
                f"first missing is '{_short(recorded.kernels[index])}' (launched by {recorded.ops[index]})")
    return (f"step {step} launched {len(got.kernels)} CUDA kernels, the recording {len(recorded.kernels)}; the "
            f"first extra is '{_short(got.kernels[index])}' (launched by {got.ops[index]})")
