"""The recording's digest cadence: forced every N per optimizer, or auto within 0.25% of the step time."""
from __future__ import annotations

import pytest

from detrun.engine import digest_cadence
from detrun.engine.digest_cadence import MAX_EVERY, WARMUP_STEPS, DigestCadence


def _digested_counts(cadence: DigestCadence, steps: int, optimizers: int = 1, step_seconds: float = 1.0,
                     digest_seconds: float = 0.0) -> list[tuple[int, int]]:
    """Drive the cadence as the verifier does, on a synthetic clock; return the (count, optimizer) digested."""
    now, step = 0.0, 0
    counts = [0] * optimizers
    next_digest = [1] * optimizers
    digested = []
    for _ in range(steps):
        for optimizer in range(optimizers):
            now += step_seconds
            step += 1
            counts[optimizer] += 1
            if counts[optimizer] >= next_digest[optimizer]:
                digested.append((counts[optimizer], optimizer))
                next_digest[optimizer] = cadence.digested(counts[optimizer], step, now, now + digest_seconds)
                now += digest_seconds
    return digested


def test_forced_every_n_digests_each_optimizer_s_first_and_every_nth_step() -> None:
    # Two optimizers stepping in turn (a GAN) are both digested.
    assert _digested_counts(DigestCadence(3), 7, optimizers=2) == [(1, 0), (1, 1), (3, 0), (3, 1), (6, 0), (6, 1)]
    assert [count for count, _ in _digested_counts(DigestCadence(1), 4)] == [1, 2, 3, 4]


@pytest.mark.parametrize(("step_seconds", "digest_seconds", "share", "interval"),
                         [(1.0, 0.05, 0.01, 5), (1.0, 0.001, 0.01, 1), (1.0, 5.0, 0.01, MAX_EVERY),
                          (1.0, 0.05, 0.005, 10)])
def test_auto_keeps_the_digests_within_the_budget(monkeypatch: pytest.MonkeyPatch, step_seconds: float,
                                                   digest_seconds: float, share: float, interval: int) -> None:
    monkeypatch.setattr(digest_cadence, "BUDGET", share)
    cadence = DigestCadence(0)
    digested = [count for count, _ in _digested_counts(cadence, 200, step_seconds=step_seconds,
                                                        digest_seconds=digest_seconds)]
    assert digested[:WARMUP_STEPS] == list(range(1, WARMUP_STEPS + 1))
    gaps = {b - a for a, b in zip(digested[WARMUP_STEPS - 1:], digested[WARMUP_STEPS:])}
    assert gaps == {interval} and cadence.interval == interval, digested


def test_auto_measures_the_program_s_step_time_without_the_digests() -> None:
    # The digest takes as long as a step: had it counted as step time, N would come out near 50, not 100.
    cadence = DigestCadence(0)
    digested = [count for count, _ in _digested_counts(cadence, 400, step_seconds=0.001, digest_seconds=0.001)]
    assert cadence.interval == MAX_EVERY and digested[-1] - digested[-2] == MAX_EVERY
