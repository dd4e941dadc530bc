"""At which optimizer steps a recording digests the parameters: every N steps, or within a time budget.

The loss is checked at every step; the full parameter digest is the per-step cost that grows with
the model. `--digest-every N` forces each optimizer's first step and every Nth. By default (`auto`,
recorded as 0) the recording digests the first WARMUP_STEPS steps, measuring how long a step and a digest
take, and then digests every N steps with N chosen so that the digests cost at most BUDGET of
the step time (N is at most MAX_EVERY, and re-chosen as the times move). The parameters after the
last step are digested at the end of the run as well (the `final_digest` of the trace's end).

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
import time

BUDGET = 0.01  # the share of the step time the digests may take
WARMUP_STEPS = 5
MAX_EVERY = 64
_SMOOTHING = 0.2  # weight of a new measurement in the running averages


class DigestCadence:
    """Decide, while recording, whether the parameters are digested at an optimizer step."""

    def __init__(self, every: int) -> None:
        self.every = every  # 0: auto
        self._last_tick: float | None = None
        self._last_digest_seconds = 0.0
        self._step_seconds: float | None = None
        self._digest_seconds: float | None = None
        # Per optimizer: its own step count and the count at its last digest, so that two optimizers
        # stepping in turn (a GAN) are both digested, whatever N is.
        self._counts: dict[int, int] = {}
        self._last_digested: dict[int, int] = {}
        self.interval = 1  # the current N (auto), for tests

    def due(self, optimizer: int) -> bool:
        """Return whether to digest at this step of an optimizer (called once per step, before the digest)."""
        # Called at every step, right after the step's own work: plain arithmetic, no calls beyond the clock.
        count = self._counts[optimizer] = self._counts.get(optimizer, 0) + 1
        if self.every:
            return count == 1 or count % self.every == 0
        now = time.perf_counter()
        last = self._last_tick
        self._last_tick = now
        if last is not None:
            # The program's own step time: what passed since the last tick, less detrun's digest.
            sample = now - last - self._last_digest_seconds
            if sample < 1e-9:
                sample = 1e-9
            average = self._step_seconds
            self._step_seconds = sample if average is None else average + _SMOOTHING * (sample - average)
        self._last_digest_seconds = 0.0
        if count <= WARMUP_STEPS or self._digest_seconds is None:
            return True
        return count - self._last_digested.get(optimizer, 0) >= self.interval

    def digested(self, optimizer: int, seconds: float) -> None:
        """Note that an optimizer's parameters were just digested, in this many seconds; choose the next N."""
        self._last_digested[optimizer] = self._counts.get(optimizer, 0)
        self._last_digest_seconds = seconds
        self._digest_seconds = _smoothed(self._digest_seconds, seconds)
        if self._step_seconds is not None:
            # Re-chosen at each digest (at most MAX_EVERY steps apart), as the step and digest times move.
            ratio = self._digest_seconds / (BUDGET * self._step_seconds)
            self.interval = min(MAX_EVERY, max(1, math.ceil(round(ratio, 6))))  # 5.000000001 is 5


def _smoothed(average: float | None, sample: float) -> float:
    return sample if average is None else average + _SMOOTHING * (sample - average)
