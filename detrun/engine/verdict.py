"""The verdict of a replay: REPRODUCED, DIVERGED or UNVERIFIED, decided from checks, never from events alone.

- REPRODUCED: at least one check of the training state was made (per-step digests, losses at
  backward(), the final-state digest), every state and output check matched, the whole recorded
  run was replayed, no hook failed, and no training ran in a process detrun did not record.
- DIVERGED: a state or output check differed. The first one is named, with the most likely cause.
- UNVERIFIED: anything else, with the reason and what the user can do.

Event mismatches (a listing with other files, a seed taken at another line, a call the recording
does not have) are *causes*: they are listed beside the verdict and never decide it.
"""
from __future__ import annotations

from typing import Literal, NamedTuple, Sequence

from detrun.errors import ExitCode

CheckKind = Literal["state", "output", "event"]

# The checks that look at the training state itself; at least one must have been made.
STATE_CHECKS = ("steps", "losses", "final state")


# NamedTuples, not dataclasses: every session imports this module, and dataclasses brings inspect
# (some 8 ms of start-up, issue 15). Made once and never changed.
class Divergence(NamedTuple):
    """One point where a replay departed from its recording."""

    kind: str
    message: str
    step: int | None = None
    batch: str | None = None  # "DataLoader #0 epoch 1, batch 7" when the departure is in the data
    check: CheckKind = "state"  # state and output decide the verdict; events are causes
    # What a step check found different ("loss", "parameters", "optimizer"), so `detrun check` can
    # tell its criteria apart without reading messages; empty for every other check.
    parts: tuple[str, ...] = ()
    # The process of a launched command it happened in (`rank 1`); empty for a single process.
    process: str = ""


class ReplayFacts(NamedTuple):
    """Everything a replay found, as the verdict needs it."""

    divergences: list[Divergence]  # state and output checks that differed, in order
    mismatches: list[Divergence]  # event mismatches, in order
    causes: list[str]  # environment and pinning differences, most likely first
    checks: dict[str, int]  # check name -> how many were made (all matched unless in divergences)
    hook_failures: list[str]
    unrecorded: list[str]  # processes that ran the script's code without a session
    steps: int
    events_used: int
    trace_complete: bool
    trace_reason: str  # why an incomplete recording ended ("killed by SIGTERM")
    final_digest: int | None = None
    # Recorded processes of a launched command (ranks) whose replay never reported its checks.
    missing_processes: Sequence[str] = ()


class Verdict(NamedTuple):
    """The outcome of a replay: a status, its one-line text, and the exit code it maps to."""

    status: Literal["REPRODUCED", "DIVERGED", "UNVERIFIED"]
    line: str
    reason: str = ""

    @property
    def exit_code(self) -> int:
        """Return the exit code a replay with this verdict ends with (when the script itself exited 0)."""
        return {"REPRODUCED": ExitCode.OK, "DIVERGED": ExitCode.DIVERGED,
                "UNVERIFIED": ExitCode.UNVERIFIED}[self.status]


def likely_cause(facts: ReplayFacts, first: Divergence | None = None) -> str | None:
    """Return the most likely cause: the first event mismatch at or before the divergence, else an environment cause."""
    step = first.step if first is not None else None
    if facts.unrecorded:
        return f"the script's code ran in process(es) detrun did not record: {', '.join(facts.unrecorded[:3])}"
    if facts.hook_failures:
        # detrun's own failure comes before any departure it may have caused (a batch it never recorded).
        return f"a detrun hook failed ({facts.hook_failures[0]}), so that source may not have been replayed"
    for mismatch in facts.mismatches:
        if step is None or mismatch.step is None or mismatch.step <= step:
            return mismatch.message
    return facts.causes[0] if facts.causes else None


# How each check reads in the verdict line: (one, many).
_CHECK_WORDS = {"losses": ("backward() loss", "backward() losses"), "stdout lines": ("stdout line", "stdout lines"),
                "final state": ("final state", "final states"), "exit status": ("exit status", "exit statuses"),
                "batches": ("batch", "batches"),
                "output files": ("written file", "written files")}


def _checks_text(facts: ReplayFacts) -> str:
    """Return '200 steps, 1 backward() loss, 2 stdout lines, ...' for the checks that were made."""
    parts = [f"{facts.steps} steps"] if facts.checks.get("steps") else []
    for name, count in facts.checks.items():
        if count and name != "steps":
            one, many = _CHECK_WORDS.get(name, (name, name))
            parts.append(f"{count} {one if count == 1 else many}")
    return ", ".join(parts)


def _departures(facts: ReplayFacts) -> str:
    """Return a note on the event mismatches beside a verdict that they did not decide."""
    if not facts.mismatches:
        return ""
    more = len(facts.mismatches) - 1
    return (f"; the replay departed from the recorded events: {facts.mismatches[0].message}"
            + (f" (+{more} more: replay -v lists them)" if more else ""))


def decide(facts: ReplayFacts) -> Verdict:
    """Return the verdict for what a replay found."""
    if facts.divergences:
        first = facts.divergences[0]
        where = f" at step {first.step}" if first.step is not None else ""
        where += f" on {first.process}" if first.process else ""
        more = len(facts.divergences) - 1
        tail = f" (+{more} more: replay -v or --json lists them)" if more else ""
        batch = next((d.batch for d in [*facts.divergences, *facts.mismatches] if d.batch), None)
        first_batch = f"; first divergent batch: {batch}" if batch and first.batch is None else ""
        cause = likely_cause(facts, first)
        cause_text = f"; likely cause: {cause}" if cause else ""
        return Verdict("DIVERGED", f"DIVERGED{where}: {first.message}{tail}{first_batch}{cause_text}")
    state_checks = sum(facts.checks.get(name, 0) for name in STATE_CHECKS)
    if state_checks == 0 and not facts.trace_complete:
        reason = (f"the recording ended ({facts.trace_reason}) before any of its training state was recorded, "
                  "so nothing could be checked; record the run again and let it finish")
        return Verdict("UNVERIFIED", f"UNVERIFIED ({reason}){_departures(facts)}", reason)
    if state_checks == 0:
        fed = (f"{facts.events_used} recorded events were fed back, but " if facts.events_used else "")
        reason = (f"{fed}nothing of the training state could be checked: the run made no optimizer or Keras "
                  "training step, called no backward(), and created no torch.nn.Module or optimizer")
        return Verdict("UNVERIFIED", f"UNVERIFIED ({reason}){_departures(facts)}", reason)
    if facts.missing_processes:
        shown = ", ".join(facts.missing_processes[:3]) + (" …" if len(facts.missing_processes) > 3 else "")
        reason = (f"{len(facts.missing_processes)} recorded process(es) did not finish their replay ({shown}), "
                  "so their checks are missing; the checks that were made matched")
        return Verdict("UNVERIFIED", f"UNVERIFIED ({reason}){_departures(facts)}", reason)
    if facts.hook_failures:
        reason = (f"a detrun hook failed ({facts.hook_failures[0]}), so that source may not have been replayed; "
                  "the checks that were made matched")
        return Verdict("UNVERIFIED", f"UNVERIFIED ({reason})", reason)
    if facts.unrecorded:
        shown = ", ".join(facts.unrecorded[:3]) + (" …" if len(facts.unrecorded) > 3 else "")
        reason = (f"the script's code ran in {len(facts.unrecorded)} process(es) detrun did not record ({shown}); "
                  "what they did was not replayed or checked")
        return Verdict("UNVERIFIED", f"UNVERIFIED ({reason})", reason)
    digest = f", final digest {facts.final_digest:08x}" if facts.final_digest is not None else ""
    checks = _checks_text(facts)
    if not facts.trace_complete:
        return Verdict("REPRODUCED", f"REPRODUCED up to step {facts.steps} of an incomplete recording "
                                     f"({facts.trace_reason}) ({checks}{digest}){_departures(facts)}")
    return Verdict("REPRODUCED", f"REPRODUCED ({checks}, {facts.events_used} events{digest}){_departures(facts)}")


def report(facts: ReplayFacts, verdict: Verdict) -> dict[str, object]:
    """Return the machine-readable verdict: every check with its count and every divergence."""
    return {
        "verdict": verdict.status,
        "line": verdict.line,
        "reason": verdict.reason,
        "checks": dict(facts.checks),
        "steps": facts.steps,
        "events_used": facts.events_used,
        "divergences": [d._asdict() for d in facts.divergences],
        "mismatches": [d._asdict() for d in facts.mismatches],
        "causes": list(facts.causes),
        "hook_failures": list(facts.hook_failures),
        "unrecorded_processes": list(facts.unrecorded),
        "missing_processes": list(facts.missing_processes),
        "trace_complete": facts.trace_complete,
        "trace_reason": facts.trace_reason,
        "final_digest": facts.final_digest,
    }
