"""`detrun explain`: for a replay that DIVERGED, the first op whose output differs, its line, and what fixes it.

1. A plain replay (launch.replay, its `--json` report) gives the verdict and the divergent step S;
   a replay that reproduced has nothing to explain.
2. A replay with every op of steps 1..S digested, with the user's line of each op
   (engine/sources/op_digests.py writes them to a scratch file here and stops after step S).
3. A second such replay.
4. If the trace holds op digests (`record --op-digests K`) for steps up to S, the first op whose
   output differs from the recording is the answer; otherwise the first op whose output differs
   between the two replays, which is nondeterministic on this machine. Either way, two replays
   that agree point at the environment: its differences from the recording that can change bits
   are named (env.diff).

The op is then looked up in the knowledge base (profiler/kb.py) and the patch registry
(findings.lookup_patch). The verdict stays replay's; this module only explains it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import linecache
import os
import sys
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

from detrun.errors import ExitCode, TraceError
from detrun.trace.op_codec import OpStep, decode_steps, describe_difference, first_difference, split_key
from detrun.trace.registry import OP_DIGESTS

if TYPE_CHECKING:
    from detrun.runner import Target

Status = Literal["reproduced", "unverified", "nondeterministic op", "differs from the recording", "environment",
                 "not found"]
MAX_ENVIRONMENT = 5  # differences named when the environment is the likely cause


@dataclasses.dataclass
class FirstOp:
    """The first op whose output differs between two captures of the same steps."""

    step: int
    index: int  # 0-based, within the step
    key: str  # "aten::add.Tensor@cpu"
    site: str | None  # "/abs/train.py:14"
    message: str

    @property
    def name(self) -> str:
        """Return 'aten::add.Tensor'."""
        return split_key(self.key)[0]

    @property
    def device(self) -> str:
        """Return 'cpu' or 'cuda'."""
        return split_key(self.key)[1]


@dataclasses.dataclass
class Explanation:
    """What `detrun explain` found, for the terminal and for `--json`."""

    status: Status
    verdict_line: str
    step: int | None = None  # the divergent step
    op: FirstOp | None = None
    against: str = ""  # what the op was compared with: "the recording" or "the first replay"
    nondeterministic_here: bool | None = None  # whether two replays on this machine differ (None: not compared)
    knowledge: list[str] = dataclasses.field(default_factory=list)
    patch: str | None = None
    environment: list[str] = dataclasses.field(default_factory=list)
    detail: str = ""

    @property
    def exit_code(self) -> int:
        """Return 0 when the replay reproduced, 5 when it was unverified, 3 for a divergence (explained or not)."""
        if self.status == "reproduced":
            return int(ExitCode.OK)
        return int(ExitCode.UNVERIFIED if self.status == "unverified" else ExitCode.DIVERGED)

    def as_json(self) -> dict[str, Any]:
        """Return the machine-readable explanation."""
        op = None
        if self.op is not None:
            op = {"name": self.op.name, "device": self.op.device, "step": self.op.step, "index": self.op.index + 1,
                  "site": self.op.site, "message": self.op.message}
        return {"status": self.status, "exit_code": self.exit_code, "verdict": self.verdict_line, "step": self.step,
                "op": op, "compared_with": self.against or None,
                "nondeterministic_here": self.nondeterministic_here, "knowledge_base": self.knowledge,
                "patch": self.patch, "environment": self.environment, "detail": self.detail}


# ------------------------------------------------------------------ the comparison (pure)


def first_op_difference(reference: Sequence[OpStep], got: Sequence[OpStep], reference_name: str) -> FirstOp | None:
    """Return the first op, in step order, whose key or output digest differs between two captures."""
    by_step = {s.step: s for s in reference if s.skipped is None}
    for step in sorted((s for s in got if s.skipped is None), key=lambda s: s.step):
        recorded = by_step.get(step.step)
        if recorded is None:
            continue
        index = first_difference(recorded, step)
        if index is None:
            continue
        key = step.ops[index] if index < len(step.ops) else recorded.ops[index]
        site = step.sites[index] if step.sites is not None and index < len(step.sites) else None
        return FirstOp(step.step, index, key, site, describe_difference(recorded, step, index, reference_name,
                                                                        with_site=False))
    return None


def knowledge_of(name: str, device: str) -> tuple[list[str], str | None]:
    """Return the knowledge base's facts about an op on a device, and the detrun patch for it."""
    from detrun.profiler.findings import lookup_patch
    from detrun.profiler.kb import KnowledgeBase, KnowledgeBaseError, installed_version

    base, _, overload = name.partition(".")
    facts: list[str] = []
    try:
        kb = KnowledgeBase.load(installed_version("torch"))
        rules = kb.candidates(device, base, overload or "default")
    except KnowledgeBaseError as exc:
        return [f"the knowledge base could not be read: {exc}"], lookup_patch(name)
    for rule in rules:
        nature = "nondeterministic" if rule.nondeterministic else "deterministic"
        when = f" when {', '.join(rule.when)}" if rule.when else ""
        mode = ("; deterministic mode fixes it" if rule.det_mode_fixes else
                "; deterministic mode raises on it" if rule.raises_in_det_mode else "")
        facts.append(f"{base} is {nature} on {rule.device}{when}{mode} ({rule.id}: {rule.note or rule.api})")
    if not facts:
        facts.append(f"no entry for {base} on {device}: the op is not known to be nondeterministic by itself, so "
                     "what differs is more likely an input it was given (a value from the clock, another process, "
                     "a thread) or the machine")
    return facts, lookup_patch(name)


# ------------------------------------------------------------------ the runs


def _say(message: str) -> None:
    print(f"detrun: explain: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _descriptors_into(stdout_path: str, stderr_path: str | None = None) -> Iterator[None]:
    """Point file descriptor 1 (and 2) at files for one run: the script's output is not explain's."""
    sys.stdout.flush()
    sys.stderr.flush()
    targets = [(1, stdout_path)] + ([(2, stderr_path)] if stderr_path else [])
    saved = [(fd, os.dup(fd)) for fd, _ in targets]
    try:
        for fd, path in targets:
            with open(path, "wb") as out:
                os.dup2(out.fileno(), fd)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)


def read_dump(path: str) -> list[OpStep]:
    """Return the steps a capture replay wrote (a scratch file of ours; malformed content is refused)."""
    import msgpack

    try:
        with open(path, "rb") as handle:
            payloads = list(msgpack.Unpacker(handle, raw=False, max_buffer_size=1 << 30))
        return decode_steps(payloads)
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RuntimeError(f"cannot read the op capture {path}: {exc}") from None


def _capture(trace: str, target: Target | None, step: int, work: str, name: str, **replay_options: Any) -> list[OpStep]:
    """Replay steps 1..step with every op digested; return the captured steps."""
    from detrun.launch import replay

    dump, log = os.path.join(work, f"{name}.ops"), os.path.join(work, f"{name}.stderr")
    with _descriptors_into(os.path.join(work, f"{name}.stdout"), log):
        replay(trace, target, quiet=True, op_capture=(step, dump), **replay_options)
    steps = read_dump(dump)
    if not steps:
        with open(log, encoding="utf-8", errors="replace") as handle:
            tail = handle.read().strip().splitlines()[-3:]
        raise RuntimeError("the replay with op capture ended before step 1 was captured"
                           + (f": {' / '.join(tail)}" if tail else ""))
    return steps


def _divergent_step(report: dict[str, Any]) -> int:
    """Return the step of the first divergence (the last step replayed when it was not at a step)."""
    for divergence in report.get("divergences") or []:
        if isinstance(divergence, dict) and isinstance(divergence.get("step"), int) and divergence["step"] > 0:
            return int(divergence["step"])
        break
    steps = report.get("steps")
    return max(1, steps) if isinstance(steps, int) else 1


def explain(trace: str, target: Target | None, *, allow_changed_script: bool = False,
            allow_changed_args: bool = False) -> Explanation:
    """Replay the trace, and if it diverges find the first op whose output differs, and why."""
    from detrun.check_criteria import read_replay_report
    from detrun.child_process import scratch_directory
    from detrun.launch import replay
    from detrun.trace import read_header, read_trace

    read_header(trace)  # a missing or damaged trace is one line and exit 2 before anything runs
    options = {"allow_changed_script": allow_changed_script, "allow_changed_args": allow_changed_args}
    with scratch_directory() as work:
        _say("replay 1: the verdict")
        report_path = os.path.join(work, "replay.json")
        with _descriptors_into(os.path.join(work, "replay.stdout")):
            replay(trace, target, report_json=report_path, **options)
        report = read_replay_report(report_path)
        if report is None:
            return Explanation("unverified", "no verdict", detail="the replay ended without a verdict")
        line = str(report.get("line", ""))
        if report.get("verdict") == "REPRODUCED":
            return Explanation("reproduced", line, detail="the replay reproduced the recording: nothing to explain")
        if report.get("verdict") != "DIVERGED":
            return Explanation("unverified", line, detail="the replay did not diverge, so there is nothing to "
                                                          "explain; the verdict says what could not be checked")
        step = _divergent_step(report)
        try:
            recorded = [s for s in decode_steps(read_trace(trace).of(OP_DIGESTS))
                        if s.step <= step and s.skipped is None]
        except (ValueError, TypeError) as exc:
            raise TraceError(f"{trace} is corrupt (its op digests: {exc})") from None
        _say(f"replay 2: every op of steps 1..{step} digested")
        first = _capture(trace, target, step, work, "capture1", **options)
        against_recording = first_op_difference(recorded, first, "the recording")
        _say("replay 3: the same steps again, to compare the replays with each other")
        second = _capture(trace, target, step, work, "capture2", **options)
    between_replays = first_op_difference(first, second, "the first replay")
    if against_recording is not None:
        found = _with_knowledge(Explanation("differs from the recording", line, step, against_recording,
                                            "the recording", nondeterministic_here=between_replays is not None))
        if between_replays is None:
            return _environment(found, trace)
        if (between_replays.step, between_replays.index) != (against_recording.step, against_recording.index):
            site = f" at {_short_site(between_replays.site)}" if between_replays.site else ""
            found.detail = f"two replays on this machine differ elsewhere: {between_replays.message}{site}"
        return found
    if between_replays is not None:
        return _with_knowledge(Explanation("nondeterministic op", line, step, between_replays, "the first replay",
                                           nondeterministic_here=True))
    if any(s.step == step for s in recorded):
        return Explanation("not found", line, step, detail=(
            f"every op of steps 1..{step} the recording digested had the output recorded, and two replays agree: "
            "the divergence comes from outside the ops of the main thread (data prepared in other threads or "
            "processes, a checked value computed without torch ops)"))
    found = _environment(Explanation("environment", line, step, nondeterministic_here=False), trace)
    if recorded:
        found.detail += f"; the recorded op digests of steps {recorded[0].step}..{recorded[-1].step} matched"
    return found


def _with_knowledge(explanation: Explanation) -> Explanation:
    assert explanation.op is not None
    explanation.knowledge, explanation.patch = knowledge_of(explanation.op.name, explanation.op.device)
    return explanation


def _environment(explanation: Explanation, trace: str) -> Explanation:
    from detrun.env import diff as env_diff

    differences = [d for d in env_diff.compare_with_trace(trace) if d.impact == env_diff.BITS]
    explanation.environment = [d.describe() + (f" ({d.why})" if d.why else "") for d in differences[:MAX_ENVIRONMENT]]
    explanation.detail = (f"two replays on this machine ran every op of steps 1..{explanation.step} with the same "
                          "outputs: this machine is deterministic here; the recording differs: likely the environment")
    if not differences:
        explanation.detail += (" (no difference of the environment detrun fingerprints can change bits: look at "
                               "what it does not see, such as files the script reads)")
    return explanation


# ------------------------------------------------------------------ the text


def _short_site(site: str) -> str:
    path, _, line = site.rpartition(":")
    cwd = os.getcwd()
    shown = os.path.relpath(path, cwd) if path.startswith(cwd.rstrip(os.sep) + os.sep) else path
    return f"{shown}:{line}"


def render(explanation: Explanation) -> list[str]:
    """Return the lines `detrun explain` prints (without the `detrun:` prefix)."""
    lines: list[str] = []
    op = explanation.op
    if op is None:
        if explanation.step is not None:
            lines.append(f"explain: no op explains the divergence at step {explanation.step}")
        lines.append(f"  {explanation.detail}")
        lines += [f"  environment: {item}" for item in explanation.environment]
        return lines
    lines.append(f"explain: the first op whose output differs is {op.name} on {op.device}, op #{op.index + 1} of "
                 f"step {op.step}")
    if op.site is not None:
        path, _, number = op.site.rpartition(":")
        source = linecache.getline(path, int(number)).strip() if number.isdigit() else ""
        lines.append(f"  at {_short_site(op.site)}" + (f": {source}" if source else ""))
    lines.append(f"  {op.message}")
    if explanation.nondeterministic_here and not explanation.detail:
        lines.append("  two replays on this machine differ there: the op, or a value it is given, is "
                     "nondeterministic here")
    elif explanation.detail:
        lines.append(f"  {explanation.detail}")
        lines += [f"  environment: {item}" for item in explanation.environment]
    lines += [f"  knowledge base: {fact}" for fact in explanation.knowledge]
    lines.append(f"  patch: {explanation.patch} (applied by `detrun record --policy strict`)" if explanation.patch
                 else "  patch: none in detrun for this op")
    return lines
