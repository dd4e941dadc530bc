"""The end of a replay: what was left unused, the facts the verdict is decided from, and the report."""
from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, Callable, Sequence

from detrun.engine.verdict import Divergence, ReplayFacts, Verdict, decide, report
from detrun.trace.registry import STEP

if TYPE_CHECKING:
    from detrun.trace import Trace


class ReplayEnd:
    """The part of the Session that closes a replay and gives its verdict (a mixin)."""

    trace: Trace | None
    divergences: list[Divergence]
    mismatches: list[Divergence]
    causes: list[str]
    checked: dict[str, int]
    hook_failures: list[str]
    unrecorded: list[str]
    last_digest: int | None
    report_json: str | None
    verbose: bool
    role: str
    _cursors: dict[str, int]
    _replayed: int
    process_steps: int
    process_events: int
    process_final_digest: int | None
    missing_processes: list[str]
    steps: int
    diverge: Callable[..., None]
    mismatch: Callable[..., None]
    count_check: Callable[..., None]
    recorded: Callable[[str], Sequence[Any]]

    def _finish_replay(self, exit_status: int | None, interrupted: bool = False) -> Verdict:
        self._final_checks(exit_status, interrupted)
        facts = self.facts()
        verdict = decide(facts)
        print(f"detrun: {verdict.line}", file=sys.stderr)
        if self.report_json:
            try:
                with open(self.report_json, "w", encoding="utf-8") as out:
                    json.dump(report(facts, verdict), out, indent=2, default=str)
            except OSError as exc:
                print(f"detrun: warning: cannot write {self.report_json}: {exc}", file=sys.stderr)
        if self.verbose:
            for d in self.divergences:
                where = f" at step {d.step}" if d.step else ""
                on = f" on {d.process}" if d.process else ""
                print(f"detrun:   {d.check} check differs{where}{on}: {d.message}", file=sys.stderr)
            for d in self.mismatches:
                print(f"detrun:   cause{f' ({d.process})' if d.process else ''}: {d.message}", file=sys.stderr)
            for cause in self.causes:
                print(f"detrun:   environment: {cause}", file=sys.stderr)
        return verdict

    def _final_checks(self, exit_status: int | None, interrupted: bool = False) -> None:
        """Make the checks of a replay's end: leftover events, the exit status, the final step digest."""
        assert self.trace is not None
        if exit_status is not None and self.trace.complete and not interrupted:
            self._check_leftovers(exit_status)
        # An interrupted replay never reached the recording's last step: its digest says nothing.
        if exit_status is not None and self.trace.complete and not interrupted and self.trace.end is not None:
            recorded_final = self.trace.end.get("final_digest")
            if recorded_final is not None and self.last_digest is not None and recorded_final != self.last_digest:
                self.diverge("step", f"the final step digest differs (recorded {recorded_final:08x}, "
                                     f"got {self.last_digest:08x})", step=self.steps, parts=("parameters",))

    def _check_leftovers(self, exit_status: int) -> None:
        """Report recorded events the replay never asked for, and a changed exit status."""
        assert self.trace is not None
        for kind, message in self._unused_events():
            if kind == "step":
                self.diverge(kind, message, step=self.steps)  # fewer training steps is a state difference
            else:
                self.mismatch(kind, message)
        recorded_status = self.trace.end.get("exit_status") if self.trace.end else None
        if recorded_status is not None:
            self.count_check("exit status")
            if recorded_status != exit_status:
                self.diverge("exit", f"exit status recorded {recorded_status}, got {exit_status}", check="output")

    def _unused_events(self) -> list[tuple[str, str]]:
        """Return (kind, message) for every kind whose recorded events the replay did not all use."""
        assert self.trace is not None
        unused = []
        for kind, count in self.trace.counts.get(self.role, {}).items():
            used = self._cursors.get(kind, 0)
            if used >= count:
                continue
            if kind == STEP:
                unused.append((kind, f"the replay made {used} optimizer steps, the recording {count}"))
            else:
                unused.append((kind, f"the recording has {count - used} more {kind} event(s) "
                                     "that the replay never asked for"))
        return unused

    def facts(self) -> ReplayFacts:
        """Return what this replay found, for the verdict and `--json`."""
        assert self.trace is not None
        end = self.trace.end or {}
        recorded_failures = end.get("hook_failures")
        failures = [f"while recording: {f}" for f in recorded_failures if isinstance(f, str)] \
            if isinstance(recorded_failures, list) else []
        return ReplayFacts(
            divergences=list(self.divergences), mismatches=list(self.mismatches), causes=list(self.causes),
            checks={name: count for name, count in self.checked.items() if count},
            hook_failures=failures + self.hook_failures, unrecorded=list(self.unrecorded),
            # A launched command's ranks report their own steps and events (engine.process_segments).
            steps=max(self.steps, self.process_steps), events_used=self._replayed + self.process_events,
            trace_complete=self.trace.complete, trace_reason=str(end.get("reason", "incomplete")),
            final_digest=self.last_digest if self.last_digest is not None else self.process_final_digest,
            missing_processes=list(self.missing_processes))

    def verdict(self) -> str:
        """Return the one-line verdict of a replay."""
        return decide(self.facts()).line
