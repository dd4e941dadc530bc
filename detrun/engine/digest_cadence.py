"""At which optimizer steps a recording digests the parameters: every N steps, or within a time budget.

The loss is checked at every step; the full parameter digest is the per-step cost that grows with
the model. `--digest-every N` forces each optimizer's first step and every Nth. By default (`auto`,
recorded as 0) the recording digests the first WARMUP_STEPS steps, measuring how long a step and a digest
take, and then digests every N steps with N chosen so that the digests cost at most BUDGET of
the step time (N is at most MAX_EVERY, and re-chosen as the times move). The parameters after the
last step are digested at the end of the run as well (the `final_digest` of the trace's end).
BUDGET is a quarter of a percent because it is timed at the digest alone: its check at the batch's
flush and the caches it fills for the program's next step about double what a digest really costs
(benchmarks/overhead.py). The step time is measured between digests, so a step between them costs
one integer comparison.

A replay digests exactly the steps the recording did (it reads the recorded step event before
deciding), so the choice is free to depend on this machine's timing. The bound this gives:
- a change that the loss shows is named at the first step whose loss differs: a weight changed
  during step k shows in the loss of step k+1. No parameter is named there, since the recording
  holds no digest of that step to compare with (the verdict says so, with the last digested step);
- a change in the parameters that no loss shows is caught at the next digested step, at most N
  steps after it happened (and, at the latest, by the digest after the last step and the final
  state).
`--digest-every 1` names the exact step and parameter, at the digests' full cost.
"""
from __future__ import annotations

import math

BUDGET = 0.0025  # the share of the step time the digests may take, as timed at each digest
WARMUP_STEPS = 5
MAX_EVERY = 64
_SMOOTHING = 0.2  # weight of a new measurement in the running averages


class DigestCadence:
    """Choose, while recording, the optimizer step counts at which the parameters are digested.

    The verifier counts each optimizer's steps and digests when the count reaches the count this
    returned at the previous digest: the step itself then costs an integer comparison, with no
    clock read or call. The program's step time is measured between digests instead.
    """

    def __init__(self, every: int) -> None:
        self.every = every  # 0: auto
        self._step_seconds: float | None = None
        self._digest_seconds: float | None = None
        self._last_end: tuple[int, float] | None = None  # (clock step, perf_counter) when the latest digest ended
        self.interval = 1  # the current N (auto), for tests

    def digested(self, count: int, step: int, started: float, finished: float) -> int:
        """Note a digest at an optimizer's `count`th step (the clock's `step`), timed by perf_counter; return the count of its next."""
        if self.every:
            return (count // self.every + 1) * self.every  # its first step, then every Nth: 1, N, 2N, ...
        last = self._last_end
        self._last_end = (step, finished)
        if last is not None and step > last[0]:
            # The program's own step time: the time since the previous digest ended, per step.
            sample = max(started - last[1], 1e-9) / (step - last[0])
            self._step_seconds = _smoothed(self._step_seconds, sample)
        self._digest_seconds = _smoothed(self._digest_seconds, finished - started)
        if count < WARMUP_STEPS or self._step_seconds is None:
            return count + 1
        # Re-chosen at each digest (at most MAX_EVERY steps apart), as the step and digest times move.
        ratio = self._digest_seconds / (BUDGET * self._step_seconds)
        self.interval = min(MAX_EVERY, max(1, math.ceil(round(ratio, 6))))  # 5.000000001 is 5
        return count + self.interval


def _smoothed(average: float | None, sample: float) -> float:
    return sample if average is None else average + _SMOOTHING * (sample - average)
