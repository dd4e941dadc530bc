"""`detrun check`: record once, replay N-1 times, and judge the runs by the criteria of a reproducible run.

The criteria are those of Chen et al. (ICSE'22, "Towards training reproducible deep learning models"):
identical loss at every step, identical final weights, identical outputs. Each becomes a row with
whether it was checked at all, whether it held, and what was compared; a row that detrun cannot
check says so and never passes. The comparisons themselves are replay's (launch.replay and its
`--json` report); this module only runs them, reads the recorded trace for what it holds, and
folds the replay reports into rows. Optional plain runs (`python SCRIPT ARGS`, no detrun) show how
much the script varies on its own, so that a pass means something.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Sequence

from detrun.errors import ExitCode
from detrun.trace.registry import BACKWARD_LOSS, FINAL_STATE, STDOUT, STEP, TF_STEP

if TYPE_CHECKING:
    from detrun.runner import Target

Status = Literal["REPRODUCED", "DIVERGED", "UNVERIFIED"]
Match = Callable[[dict[str, Any]], bool]  # picks the divergences of a replay report that fail a row

STEP_KINDS = (STEP, TF_STEP)
# The replay check names each row covers; any other check (batches, ...) goes to the "other checks" row.
_ROW_CHECKS = {"steps", "losses", "final state", "stdout lines", "exit status"}
FILES_NOT_RECORDED = "files are not recorded yet (the trace holds only the directories written into)"


@dataclasses.dataclass
class TraceFacts:
    """What a recording holds that the criteria compare."""

    complete: bool
    reason: str
    steps: int
    step_losses: int  # steps whose loss was a scalar (and so compared)
    step_digests: int  # steps whose parameters were digested (`digest_every`: 0 auto, else every N)
    digest_every: int
    backward_losses: int
    final_items: int
    stdout_lines: int | None  # None: no stdout event
    exit_status: int | None
    final_digest: int | None


@dataclasses.dataclass
class Criterion:
    """One row of the table: checked or not, and whether it held."""

    name: str
    checked: bool
    holds: bool | None  # None when not checked
    detail: str
    step: int | None = None  # where it first failed, when that was at a step

    @property
    def result(self) -> str:
        """Return 'holds', 'FAILS' or 'not checked'."""
        if not self.checked:
            return "not checked"
        return "holds" if self.holds else "FAILS"


@dataclasses.dataclass
class PlainRuns:
    """The plain runs (`python SCRIPT ARGS`): their exit statuses and whether they differ."""

    statuses: list[int]
    differ: bool
    detail: str


@dataclasses.dataclass
class CheckResult:
    """The outcome of `detrun check`."""

    status: Status
    line: str
    criteria: list[Criterion]
    runs: int
    replay_lines: list[str]
    plain: PlainRuns | None = None

    @property
    def exit_code(self) -> int:
        """Return 0 when every checked criterion holds, 3 when one fails, 5 when unverified."""
        return int({"REPRODUCED": ExitCode.OK, "DIVERGED": ExitCode.DIVERGED,
                    "UNVERIFIED": ExitCode.UNVERIFIED}[self.status])

    def as_json(self) -> dict[str, Any]:
        """Return the machine-readable result (`check --json FILE`)."""
        return {"verdict": self.status, "line": self.line, "runs": self.runs, "exit_code": self.exit_code,
                "criteria": [{**dataclasses.asdict(c), "result": c.result} for c in self.criteria],
                "replays": self.replay_lines,
                "plain_runs": dataclasses.asdict(self.plain) if self.plain is not None else None}


def trace_facts(path: str) -> TraceFacts:
    """Read a recording (validated by the reader) and count what its checks can compare."""
    from detrun.trace import read_trace

    trace = read_trace(path)
    steps = step_losses = step_digests = 0
    for kind in STEP_KINDS:
        for _index, loss, digest, _lanes in trace.of(kind):  # streamed: never all in memory
            steps += 1
            step_losses += loss is not None
            step_digests += digest is not None
    backward = sum(1 for loss in trace.of(BACKWARD_LOSS) if loss is not None)
    finals = trace.of(FINAL_STATE)
    final_items = sum(len(f.get("items", [])) for f in finals)
    stdout = trace.of(STDOUT)
    stdout_lines = int(stdout[-1].get("count", len(stdout[-1].get("lines", [])))) if stdout else None
    end = trace.end or {}
    return TraceFacts(complete=trace.complete, reason=str(end.get("reason", "incomplete")), steps=steps,
                      step_losses=step_losses, step_digests=step_digests, backward_losses=backward,
                      digest_every=int(trace.header.get("settings", {}).get("digest_every", 1)),
                      final_items=final_items, stdout_lines=stdout_lines, exit_status=end.get("exit_status"),
                      final_digest=end.get("final_digest"))


def _first(reports: Sequence[dict[str, Any] | None], match: Match) -> tuple[str, int | None] | None:
    """Return ('replay i at step s: <message>', s) for the first divergence `match` accepts, over every replay."""
    for number, report in enumerate(reports, 1):
        for d in (report or {}).get("divergences", []):
            if match(d):
                step = d.get("step") if isinstance(d.get("step"), int) else None
                where = f" at step {step}" if step is not None else ""
                return f"replay {number}{where}: {d.get('message')}", step
    return None


def _checked_everywhere(reports: Sequence[dict[str, Any] | None], *names: str) -> bool:
    return bool(reports) and all(r is not None and any(r.get("checks", {}).get(n, 0) for n in names) for r in reports)


def _step_part(part: str) -> Match:
    # A step divergence without parts (fewer or more steps than recorded) fails both step rows.
    return lambda d: d.get("kind") in STEP_KINDS and (part in d.get("parts", ()) or not d.get("parts"))


def _row(name: str, checked: bool, failed: tuple[str, int | None] | None, held: str, unchecked: str) -> Criterion:
    """Return a row: a failure always counts as checked; otherwise it holds only where it was checked."""
    if failed is not None:
        return Criterion(name, True, False, failed[0], failed[1])
    return Criterion(name, True, True, held) if checked else Criterion(name, False, None, unchecked)


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _why(recorded: object, missing: str) -> str:
    """Say why a row went unchecked: the recording lacks it, or a replay did not get as far as comparing it."""
    return "a replay ended without comparing it (see its verdict)" if recorded else missing


def criteria(facts: TraceFacts, reports: Sequence[dict[str, Any] | None]) -> list[Criterion]:
    """Return the table's rows from the recording's facts and each replay's `--json` report."""
    replays = _plural(len(reports), "replay", "replays")
    without = facts.steps - facts.step_losses
    backward = _plural(facts.backward_losses, "backward() loss", "backward() losses")
    losses = (f"{facts.step_losses} step losses" + (f" and {backward}" if facts.backward_losses else "")
              + (f" ({without} steps had no scalar loss)" if without else ""))
    every = (" (auto: within 0.25% of the step time)" if facts.digest_every == 0
             else f" (every {facts.digest_every} steps)" if facts.digest_every > 1 else "")
    final_digest = f"; final step digest {facts.final_digest:08x}" if facts.final_digest is not None else ""
    rows = [
        _row("loss at every step",
             facts.step_losses + facts.backward_losses > 0 and _checked_everywhere(reports, "steps", "losses"),
             _first(reports, lambda d: _step_part("loss")(d) or d.get("kind") == BACKWARD_LOSS),
             f"{losses}, bit for bit, in {replays}",
             _why(facts.step_losses + facts.backward_losses, "the recording holds no scalar loss")),
        _row("parameters during training", facts.step_digests > 0 and _checked_everywhere(reports, "steps"),
             _first(reports, _step_part("parameters")),
             f"{facts.step_digests} of {facts.steps} steps digested{every}, a lane per parameter, in {replays}",
             _why(facts.step_digests, "the run made no optimizer step")),
        _row("final weights", facts.final_items > 0 and _checked_everywhere(reports, "final state"),
             _first(reports, lambda d: d.get("kind") == FINAL_STATE),
             f"{facts.final_items} items (models, optimizers, weights, RNG states) digested at exit{final_digest}",
             _why(facts.final_items, "no model, optimizer or weight was alive to digest")),
        # A replay that printed nothing, as recorded, counts no stdout check: the recording's 0 lines say it.
        _row("stdout (masked)", facts.stdout_lines is not None and all(
                 r is not None and (r.get("checks", {}).get("stdout lines") or facts.stdout_lines == 0)
                 for r in reports),
             _first(reports, lambda d: d.get("kind") == STDOUT),
             f"{facts.stdout_lines} lines; durations, rates, timestamps and addresses masked",
             _why(facts.stdout_lines is not None, "the recording holds no stdout")),
        _row("exit status", facts.exit_status is not None and _checked_everywhere(reports, "exit status"),
             _first(reports, lambda d: d.get("kind") == "exit"),
             f"{facts.exit_status} in every run",
             _why(facts.exit_status is not None, "the recording has no exit status")),
        Criterion("files written", False, None, FILES_NOT_RECORDED),
    ]
    covered = {*STEP_KINDS, BACKWARD_LOSS, FINAL_STATE, STDOUT, "exit"}
    failed = _first(reports, lambda d: d.get("kind") not in covered and d.get("check") != "event")
    others = sorted({name for r in reports if r for name, n in r.get("checks", {}).items()
                     if n and name not in _ROW_CHECKS})
    if failed or others:
        rows.append(_row(f"other checks ({', '.join(others) or 'none counted'})", True, failed,
                         f"every one matched in {replays}", ""))
    return rows


def decide(facts: TraceFacts, rows: list[Criterion], verdicts: Sequence[dict[str, Any] | None],
           runs: int) -> tuple[Status, str]:
    """Return the overall verdict and its line from the rows and each replay's own verdict."""
    failed = [row for row in rows if row.checked and not row.holds]
    if failed:
        # The earliest failure first: a later row can be the consequence of an earlier one.
        first = min(failed, key=lambda row: row.step if row.step is not None else 1 << 62)
        more = f" (+{len(failed) - 1} more criteria fail)" if len(failed) > 1 else ""
        return "DIVERGED", f"DIVERGED: {first.name}: {first.detail}{more}"
    if not facts.complete:
        return "UNVERIFIED", f"UNVERIFIED (the recording did not finish: {facts.reason})"
    for number, report in enumerate(verdicts, 1):
        if report is None:
            return "UNVERIFIED", f"UNVERIFIED (replay {number} ended without a verdict)"
        if report.get("verdict") != "REPRODUCED":
            return "UNVERIFIED", f"UNVERIFIED (replay {number}: {report.get('line')})"
    state = [row for row in rows[:3] if row.checked]
    if not state:
        return "UNVERIFIED", ("UNVERIFIED (no loss, parameter or final weight could be compared: the run made no "
                              "training step and left no model)")
    unchecked = [row.name for row in rows if not row.checked]
    held = [row.name for row in rows if row.checked]
    tail = f"; not checked: {', '.join(unchecked)}" if unchecked else ""
    return "REPRODUCED", f"REPRODUCED in {runs} runs: {', '.join(held)} identical{tail}"


# ------------------------------------------------------------------ the runs


def _say(message: str) -> None:
    print(f"detrun: check: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _stdout_into(path: str) -> Iterator[None]:
    """Point file descriptor 1 at a file for one run.

    launch starts the child with this process's descriptors, so the script's stdout lands in the
    file: each run's output is kept apart (the plain runs are compared from it) and the terminal
    does not get N copies of it. stderr, where detrun and the script report, still passes through.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(path, "wb") as out:
            os.dup2(out.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def read_replay_report(path: str) -> dict[str, Any] | None:
    """Return a replay's `--json` report, or None when the replay ended without writing one."""
    try:
        with open(path, encoding="utf-8") as handle:
            report = json.load(handle)
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def _rendered(path: str, extra: tuple[re.Pattern[str], ...]) -> list[str]:
    """Return a captured stdout's lines as replay compares them: rendered like a terminal, then masked."""
    from detrun.engine.sources.stdout_lines import TerminalLines, mask_line

    lines = TerminalLines()
    with open(path, "rb") as handle:
        lines.feed(handle.read())
    lines.close()
    return [mask_line(line, extra) for line in lines.lines]


def plain_runs(target: Target, count: int, work: str, ignore_output: tuple[str, ...] = ()) -> PlainRuns:
    """Run `python SCRIPT ARGS` `count` times without detrun; say whether their output or status differ."""
    extra = tuple(re.compile(p) for p in ignore_output)
    command = [sys.executable, *(["-m"] if target.is_module else []), target.name, *target.args]
    statuses, outputs = [], []
    for number in range(1, count + 1):
        _say(f"plain run {number} of {count}: python {target.display} ...")
        path = os.path.join(work, f"plain{number}.stdout")
        with open(path, "wb") as out:
            statuses.append(subprocess.run(command, stdout=out, check=False).returncode)
        outputs.append(_rendered(path, extra))
    for number in range(1, count):
        if statuses[number] != statuses[0]:
            return PlainRuns(statuses, True, f"exit status {statuses[0]} in plain run 1, {statuses[number]} in "
                                             f"plain run {number + 1}")
        first, other = outputs[0], outputs[number]
        for line, (a, b) in enumerate(zip(first, other), 1):
            if a != b:
                return PlainRuns(statuses, True, f"stdout line {line}: {a[:60]!r} in plain run 1, {b[:60]!r} in "
                                                 f"plain run {number + 1}")
        if len(first) != len(other):
            return PlainRuns(statuses, True, f"{len(first)} stdout lines in plain run 1, {len(other)} in plain run "
                                             f"{number + 1}")
    return PlainRuns(statuses, False, f"the same {len(outputs[0])} masked stdout lines and exit status {statuses[0]} "
                                      f"in {count} plain runs")


def run_check(target: Target, *, runs: int = 2, plain: int = 0, keep: str | None = None, quiet: bool = False,
              policy: str = "strict", profile_path: str | None = None, digest_every: int = 0,
              ignore_output: tuple[str, ...] = ()) -> CheckResult:
    """Record the target, replay it runs - 1 times, run it `plain` times without detrun, and judge the runs."""
    from detrun.child_process import scratch_directory
    from detrun.errors import OutputExists
    from detrun.launch import record, replay
    from detrun.runner import resolve

    resolve(target)  # a missing script is one line and exit 2 before anything runs
    if keep is not None:
        if os.path.exists(keep) and (not os.path.isdir(keep) or os.listdir(keep)):
            raise OutputExists(f"--keep {keep}: needs a new or empty directory")
        os.makedirs(keep, exist_ok=True)
    with scratch_directory() as scratch:
        work = keep if keep is not None else scratch
        trace = os.path.join(work, "trace.zst")
        _say(f"run 1 of {runs}: record")
        with _stdout_into(os.path.join(work, "run1.stdout")):
            record(target, trace, quiet=quiet, digest_every=digest_every, policy=policy, profile_path=profile_path)
        if not os.path.exists(trace):
            return CheckResult("UNVERIFIED", "UNVERIFIED (the recording wrote no trace)", [], runs, [])
        facts = trace_facts(trace)
        reports: list[dict[str, Any] | None] = []
        for number in range(2, runs + 1):
            _say(f"run {number} of {runs}: replay")
            report_path = os.path.join(work, f"replay{number - 1}.json")
            with _stdout_into(os.path.join(work, f"run{number}.stdout")):
                replay(trace, target, quiet=quiet, report_json=report_path, ignore_output=ignore_output)
            reports.append(read_replay_report(report_path))
        plain_result = plain_runs(target, plain, work, ignore_output) if plain else None
    rows = criteria(facts, reports)
    status, line = decide(facts, rows, reports, runs)
    lines = [str(r.get("line")) if r else "no verdict" for r in reports]
    return CheckResult(status, line, rows, runs, lines, plain_result)


def render(result: CheckResult) -> list[str]:
    """Return the criteria table, the plain-run line and the verdict, as lines for stderr."""
    width = max([len(row.name) for row in result.criteria] + [9])
    lines = [f"{'criterion':<{width}}  checked  result       detail"]
    for row in result.criteria:
        lines.append(f"{row.name:<{width}}  {'yes' if row.checked else 'no':<7}  {row.result:<11}  {row.detail}")
    if result.plain is not None:
        lines.append(f"plain runs differ: {'yes' if result.plain.differ else 'no'} ({result.plain.detail})")
        if not result.plain.differ and result.status == "REPRODUCED":
            lines.append("note: the plain runs did not differ, so this check cannot tell what detrun changed")
    lines.append(result.line)
    return lines
