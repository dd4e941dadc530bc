"""The recording's digest cadence: forced every N per optimizer, or auto within 1% of the step time."""
from __future__ import annotations

import pytest

from detrun.engine import digest_cadence
from detrun.engine.digest_cadence import MAX_EVERY, WARMUP_STEPS, DigestCadence


def test_forced_every_n_digests_each_optimizer_s_first_and_every_nth_step() -> None:
    cadence = DigestCadence(3)
    due = [(step, optimizer) for step in range(1, 8) for optimizer in (0, 1) if cadence.due(optimizer)]
    # Two optimizers stepping in turn (a GAN) are both digested.
    assert due == [(1, 0), (1, 1), (3, 0), (3, 1), (6, 0), (6, 1)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.mark.parametrize(("step_seconds", "digest_seconds", "interval"),
                         [(1.0, 0.05, 5), (1.0, 0.001, 1), (1.0, 5.0, MAX_EVERY)])
def test_auto_keeps_the_digests_within_the_budget(monkeypatch: pytest.MonkeyPatch, step_seconds: float,
                                                   digest_seconds: float, interval: int) -> None:
    clock = FakeClock()
    monkeypatch.setattr(digest_cadence, "time", clock)
    cadence = DigestCadence(0)
    digested = []
    for step in range(1, 200):
        if cadence.due(0):
            digested.append(step)
            clock.now += digest_seconds
            cadence.digested(0, digest_seconds)
        clock.now += step_seconds
    assert digested[:WARMUP_STEPS] == list(range(1, WARMUP_STEPS + 1))
    gaps = {b - a for a, b in zip(digested[WARMUP_STEPS:], digested[WARMUP_STEPS + 1:])}
    assert gaps == {interval} and cadence.interval == interval, digested
