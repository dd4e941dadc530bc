"""`detrun diff`: compare two recordings: settings, environment, the first step that differs, the final state.

Both traces are read through the reader, which validates every record against the registry, so
nothing here trusts a byte of either file. Steps are aligned by global step: a run resumed from a
checkpoint counts its optimizer steps from 1 again (the trace holds no global step), so
`offset_b = K` says B's step 1 is A's step K + 1. At each aligned step the loss is compared bit for
bit and, where both traces digested the parameters, the digests; the parameters that differ are
named from the per-parameter lanes (a lane is shared by parameters i, i + 16, ...).
"""
from __future__ import annotations

import dataclasses
import itertools
import struct
from typing import Any, Literal, Sequence

from detrun.env import diff as env_diff
from detrun.errors import ExitCode
from detrun.trace import Trace, read_trace
from detrun.trace.registry import BACKWARD_LOSS, FINAL_STATE, STEP, STEP_NAMES, TF_STEP, step_lane_bytes

LANES = 16  # engine.sources.torch_steps.LANES: the lanes a step event's per-parameter bytes fold onto
Status = Literal["equal", "differ", "nothing compared"]

# Settings that change what the run computes, and those that only change what detrun records.
_SETTINGS_BITS = {"hashseed", "thread_env", "policy", "policy_ops", "tf_op_determinism"}


@dataclasses.dataclass
class Change:
    """One field that differs between A and B, classed 'can change bits' or 'cosmetic'."""

    what: str
    a: Any
    b: Any
    impact: str

    def text(self) -> str:
        """Return 'what: A x, B y'."""
        return f"{self.what}: A {_shown(self.a)}, B {_shown(self.b)}"


@dataclasses.dataclass
class StepDiff:
    """The first aligned step whose loss or parameters differ."""

    step: int  # A's step (the global step)
    step_b: int  # the same step as B counts it
    kind: str
    parts: list[str]  # "optimizer", "parameters", "loss"
    loss_a: float | None
    loss_b: float | None
    lanes: list[int]  # lanes whose per-parameter bytes differ
    message: str


@dataclasses.dataclass
class TraceDiff:
    """Everything `detrun diff` found."""

    a: str
    b: str
    offset_b: int
    settings: list[Change]
    env: list[Change]
    steps_a: int
    steps_b: int
    compared: int  # aligned steps compared
    differing: int  # aligned steps whose loss or parameters differ
    first: StepDiff | None
    backward: str | None  # the first backward() loss (before any optimizer step) that differs
    length: str | None  # the step counts do not line up
    final: str | None  # the final state differs: what; None when equal or not compared
    final_compared: bool
    losses_a: list[tuple[int, float]]  # (global step, loss) for the plot
    losses_b: list[tuple[int, float]]
    notes: list[str]

    @property
    def status(self) -> Status:
        """Return 'differ' when the training state differs, 'equal' when all compared is equal."""
        if self.first or self.backward or self.length or self.final:
            return "differ"
        return "equal" if self.compared or self.final_compared else "nothing compared"

    @property
    def exit_code(self) -> int:
        """Return 0 equal, 3 differ, 5 nothing of the training state could be compared."""
        return int({"equal": ExitCode.OK, "differ": ExitCode.DIVERGED,
                    "nothing compared": ExitCode.UNVERIFIED}[self.status])

    def as_json(self) -> dict[str, Any]:
        """Return the machine-readable diff (`detrun diff --json`)."""
        data = {key: value for key, value in dataclasses.asdict(self).items()
                if key not in ("losses_a", "losses_b")}  # the curves are for --plot; the steps say more
        data.update(status=self.status, exit_code=self.exit_code)
        return data


def _shown(value: Any) -> str:
    return "unset" if value is None else repr(value) if isinstance(value, str) else str(value)


def _bits(value: float | None) -> bytes | None:
    return None if value is None else struct.pack("<d", value)


def _settings(a: Trace, b: Trace) -> list[Change]:
    """Return the script, arguments and settings that differ."""
    changes = []
    for what, x, y in (("script", a.header.get("script", {}).get("name"), b.header.get("script", {}).get("name")),
                       ("script sha256", a.header.get("script", {}).get("sha256"),
                        b.header.get("script", {}).get("sha256")),
                       ("arguments", a.header.get("argv"), b.header.get("argv"))):
        if x != y:
            changes.append(Change(what, x, y, env_diff.BITS))
    sa, sb = a.header.get("settings", {}), b.header.get("settings", {})
    for key in sorted(set(sa) | set(sb)):
        if sa.get(key) != sb.get(key):
            changes.append(Change(f"setting {key}", sa.get(key), sb.get(key),
                                  env_diff.BITS if key in _SETTINGS_BITS else env_diff.COSMETIC))
    return changes


def _environment(a: Trace, b: Trace) -> list[Change]:
    """Return the environment differences, classed as replay classes them (no thread pinning here)."""
    found = env_diff.classify(env_diff.diff(_as_dict(a.header.get("env")), _as_dict(b.header.get("env"))),
                              threads_pinned=False)
    # The hash seed is compared with the settings; a pinned class means nothing between two recordings.
    return [Change(d.label, d.recorded, d.current, env_diff.BITS if d.impact == env_diff.PINNED else d.impact)
            for d in found if d.key != "env.PYTHONHASHSEED"]


def _as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _parameters(lanes: list[int], width: int, names: Sequence[str] | None = None) -> str:
    """Name the parameters behind differing lanes: parameter i folds onto lane i % 16.

    A step event holds min(parameters, 16) lanes, so fewer than 16 lanes name each parameter
    exactly; with 16, a lane stands for parameters i, i + 16, i + 32, ... `width`: the lanes held.
    """
    if not lanes:
        return "the parameters differ (no lane tells which)"
    if names:
        suspects = [name for i, name in enumerate(names) if i % LANES in lanes]
        shown = ", ".join(f"'{n}'" for n in suspects[:6]) + (" …" if len(suspects) > 6 else "")
        return f"parameter{'s' if len(suspects) != 1 else ''} {shown} differ{'s' if len(suspects) == 1 else ''}"
    if width < LANES:
        shown = ", ".join(f"#{lane}" for lane in lanes)
        return (f"parameter{'s' if len(lanes) != 1 else ''} {shown} of {width} (in the optimizer's order) "
                f"differ{'s' if len(lanes) == 1 else ''}")
    shown = ", ".join(f"#{lane}" for lane in lanes[:6]) + (" …" if len(lanes) > 6 else "")
    return (f"lane{'s' if len(lanes) != 1 else ''} {shown} of {LANES} differ (parameter i is in lane i % {LANES}, "
            "in the optimizer's order)")


def _compare_step(kind: str, step: int, offset: int, a: Sequence[Any], b: Sequence[Any],
                  names: dict[int, list[str]], lane_bytes: int) -> StepDiff | None:
    """Return what differs between two step events [optimizer, loss, digest, lanes], or None.

    `lane_bytes`: the bytes per lane of both traces' events (0 when they differ: no lane is compared).
    """
    (ia, la, da, lanes_a), (ib, lb, db, lanes_b) = a, b
    parts, problems, lanes = [], [], []
    if ia != ib:
        parts.append("optimizer")
        problems.append(f"optimizer #{ia} stepped in A, #{ib} in B")
    if da is not None and db is not None and da != db:
        parts.append("parameters")
        if lane_bytes:
            lanes = sorted({i // lane_bytes for i, (x, y) in enumerate(zip(lanes_a, lanes_b)) if x != y})
            held = min(len(lanes_a), len(lanes_b)) // lane_bytes  # lanes in both events
            shown = _parameters(lanes, held, names.get(ia) if kind == STEP else None)
        else:
            shown = "the parameters differ (the two traces' detrun versions write lanes differently)"
        problems.append(f"{shown} (digest A {da:08x}, B {db:08x})")
    if _bits(la) != _bits(lb):
        parts.append("loss")
        problems.append(f"loss A {la!r}, B {lb!r}")
    if not parts:
        return None
    return StepDiff(step, step - offset, kind, parts, la, lb, lanes, "; ".join(problems))


def _names(a: Trace, b: Trace, notes: list[str]) -> dict[int, list[str]]:
    """Return each optimizer's parameter names where A and B agree on them (recorded since `step.names`)."""
    names_a = {index: list(names) for index, names in a.of(STEP_NAMES)}
    names_b = {index: list(names) for index, names in b.of(STEP_NAMES)}
    for index in sorted(set(names_a) & set(names_b)):
        if names_a[index] != names_b[index]:
            notes.append(f"optimizer #{index} has other parameters in A ({len(names_a[index])}) and B "
                         f"({len(names_b[index])}): parameters are named by position")
            del names_a[index]
    return names_a if names_b else {}


def _final(a: Trace, b: Trace) -> tuple[bool, str | None]:
    """Compare the final-state items ([key, digest, label]); return (compared, what differs)."""
    fa, fb = a.of(FINAL_STATE), b.of(FINAL_STATE)
    if not fa or not fb:
        return False, None
    items_a = {key: (digest, label) for key, digest, label in fa[-1].get("items", [])}
    items_b = {key: (digest, label) for key, digest, label in fb[-1].get("items", [])}
    differ = [items_a[k][1] for k in items_a if k in items_b and items_a[k][0] != items_b[k][0]]
    only = sorted(set(items_a) ^ set(items_b))
    if not differ and not only:
        return True, None
    parts = []
    if differ:
        parts.append(f"{len(differ)} of {len(items_a)} items differ: " + ", ".join(differ[:4])
                     + (" …" if len(differ) > 4 else ""))
    if only:
        parts.append(f"{len(only)} items only in one run (A {len(items_a)}, B {len(items_b)})")
    return True, "; ".join(parts)


def compare(path_a: str, path_b: str, offset_b: int = 0) -> TraceDiff:
    """Read two traces and compare them, B's step 1 aligned with A's step offset_b + 1."""
    a, b = read_trace(path_a), read_trace(path_b)
    notes = [f"{name} is an incomplete recording ({(t.end or {}).get('reason', 'incomplete')})"
             for name, t in (("A", a), ("B", b)) if not t.complete]
    names = _names(a, b, notes)
    first: StepDiff | None = None
    compared = differing = steps_a = steps_b = 0
    losses_a: list[tuple[int, float]] = []
    losses_b: list[tuple[int, float]] = []
    length = None
    for kind in (STEP, TF_STEP):
        events_a, events_b = a.of(kind), b.of(kind)
        steps_a += len(events_a)
        steps_b += len(events_b)
        if not events_a and not events_b:
            continue
        # Traces of different detrun versions may fold lanes differently: then no lane is compared.
        lane_bytes = step_lane_bytes(a.version(kind)) if a.version(kind) == b.version(kind) else 0
        iter_a = iter(events_a)  # streamed from the file, decoded once each
        for step, event in enumerate(itertools.islice(iter_a, offset_b), 1):  # A's steps before B began
            if event[1] is not None:
                losses_a.append((step, event[1]))
        for step_b, (event_a, event_b) in enumerate(zip(iter_a, events_b), 1):
            step = step_b + offset_b
            for series, event in ((losses_a, event_a), (losses_b, event_b)):
                if event[1] is not None:
                    series.append((step, event[1]))
            compared += 1
            found = _compare_step(kind, step, offset_b, event_a, event_b, names, lane_bytes)
            if found is not None:
                differing += 1
                first = first or found
        if len(events_a) - offset_b != len(events_b):
            noun = "optimizer steps" if kind == STEP else "TensorFlow training steps"
            length = (f"A made {len(events_a)} {noun}, B {len(events_b)}"
                      + (f" (B's step 1 is A's step {offset_b + 1})" if offset_b else ""))
    backward = None
    if offset_b == 0:
        for call, (x, y) in enumerate(zip(a.of(BACKWARD_LOSS), b.of(BACKWARD_LOSS)), 1):
            if _bits(x) != _bits(y):
                backward = f"the loss of backward() call #{call} (before the first optimizer step): A {x!r}, B {y!r}"
                break
    final_compared, final = _final(a, b)
    if offset_b:
        notes.append(f"aligned by --offset-b {offset_b}: B's step 1 is A's step {offset_b + 1}")
    return TraceDiff(path_a, path_b, offset_b, _settings(a, b), _environment(a, b), steps_a, steps_b, compared,
                     differing, first, backward, length, final, final_compared, losses_a, losses_b, notes)


def render(result: TraceDiff) -> list[str]:
    """Return the human-readable diff, one line each."""
    lines = [f"A {result.a}: {result.steps_a} steps; B {result.b}: {result.steps_b} steps", *result.notes]
    bits = [c for c in [*result.settings, *result.env] if c.impact == env_diff.BITS]
    cosmetic = [c for c in [*result.settings, *result.env] if c.impact != env_diff.BITS]
    lines.append(f"settings and environment: {len(bits)} difference(s) can change bits, {len(cosmetic)} cosmetic")
    lines.extend(f"  {env_diff.BITS}: {c.text()}" for c in bits[:20])
    if len(bits) > 20:
        lines.append(f"  {env_diff.BITS}: … and {len(bits) - 20} more")
    if cosmetic:
        lines.append(f"  {env_diff.COSMETIC}: " + ", ".join(dict.fromkeys(c.what for c in cosmetic)))
    if result.backward and result.first is None:  # else the same loss shows again at step 1
        lines.append(f"first difference: {result.backward}")
    if result.first is not None:
        f = result.first
        where = f"step {f.step}" + (f" (B's step {f.step_b})" if result.offset_b else "")
        lines.append(f"first differing step: {where}: {f.message}")
        lines.append(f"steps compared: {result.compared}, of which {result.differing} differ")
    elif result.compared:
        lines.append(f"steps compared: {result.compared}, loss and parameters identical at every one")
    if result.length:
        lines.append(f"step counts differ: {result.length}")
    if result.final_compared:
        lines.append(f"final state: {'differs: ' + result.final if result.final else 'identical'}")
    else:
        lines.append("final state: not compared (a recording holds none)")
    lines.append({"equal": "EQUAL: the training state of A and B is identical at every compared step and at the end",
                  "differ": "DIFFERENT: the training state of A and B differs",
                  "nothing compared": "NOTHING COMPARED: neither steps nor a final state to compare"}[result.status])
    return lines
