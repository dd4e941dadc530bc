"""What an in-process replay found: ReplayResult, and the errors that raise_for_verdict() raises."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from detrun.engine.verdict import ReplayFacts, Verdict


class VerdictError(AssertionError):
    """A replay whose verdict is not REPRODUCED (an AssertionError, so test runners show the reason)."""

    def __init__(self, result: ReplayResult) -> None:
        super().__init__(f"detrun: {result.line}")
        self.result = result


class DivergedError(VerdictError):
    """A state or output check of the replay differed from the recording."""


class UnverifiedError(VerdictError):
    """The replay could not vouch for the run (nothing checked, a hook failed, unrecorded processes)."""


@dataclasses.dataclass
class ReplayResult:
    """What a replay found; filled in when its `with` block ends."""

    trace: str
    line: str = ""  # the one-line verdict, as `detrun replay` prints it
    reason: str = ""  # why it is not REPRODUCED: the first divergence and its likely cause, or what was missing
    step: int | None = None  # the optimizer step of the first divergence, when it has one
    divergences: list[str] = dataclasses.field(default_factory=list)  # every state/output check that differed, in order
    causes: list[str] = dataclasses.field(default_factory=list)  # what may explain them, most likely first
    checks: dict[str, int] = dataclasses.field(default_factory=dict)  # check name -> how many were made
    _verdict: str | None = None

    @property
    def verdict(self) -> str:
        """Return "REPRODUCED", "DIVERGED" or "UNVERIFIED"."""
        if self._verdict is None:
            raise RuntimeError("the replay is still running: read its verdict after the `with` block")
        return self._verdict

    @property
    def reproduced(self) -> bool:
        """Return whether every check was made and matched."""
        return self.verdict == "REPRODUCED"

    def raise_for_verdict(self) -> None:
        """Raise DivergedError or UnverifiedError unless the verdict is REPRODUCED."""
        if self.verdict == "DIVERGED":
            raise DivergedError(self)
        if self.verdict == "UNVERIFIED":
            raise UnverifiedError(self)

    def fill(self, verdict: Verdict, facts: ReplayFacts) -> None:
        """Take the verdict and what the replay found (when its block ends)."""
        self._verdict = verdict.status
        # The command line's pointers, said the way a Python caller reaches the same lists.
        self.line = (verdict.line.replace("replay -v or --json lists them", "result.divergences lists them")
                     .replace("replay -v lists them", "result.causes lists them"))
        self.divergences = [f"step {d.step}: {d.message}" if d.step is not None else d.message
                            for d in facts.divergences]
        self.causes = [d.message for d in facts.mismatches] + list(facts.causes)
        self.checks = dict(facts.checks)
        if verdict.status == "DIVERGED":
            self.step = facts.divergences[0].step
            self.reason = self.line.split(": ", 1)[1] if ": " in self.line else self.line
        elif verdict.status == "UNVERIFIED":
            self.reason = verdict.reason

    def __repr__(self) -> str:
        return f"<ReplayResult {self.line or 'running'}>"
