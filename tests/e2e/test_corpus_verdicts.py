"""Issue 17's "Done when": honest verdicts on the realistic corpus in tests/corpus/.

Each case: two plain runs differ; record → replay reproduces with identical stdout (and, where the
script does its training in unrecorded processes, says UNVERIFIED instead); a replay with
DETRUN_CORPUS_PERTURB_STEP=k says DIVERGED at step k (or at a later check where no per-step check
exists) and exits 3. Ground truth is each script's printed weights digest and loss.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from detrun.errors import ExitCode

from corpus.catalog import (CASES, DIVERGED, REPRODUCED, UNVERIFIED, Case, Outcome, rendered, result_lines,
                            run_case)

# The false-REPRODUCED patterns: nothing but a final-state digest (or UNVERIFIED) is honest.
UNCHECKED_BY_STEPS = {"manual_sgd", "keras_torch_backend", "hogwild_mnist", "spawn_child_train"}


def params() -> list[object]:
    """Return one pytest param per corpus case, heavy frameworks marked slow."""
    return [pytest.param(case, id=case.name, marks=[pytest.mark.slow] if case.slow else []) for case in CASES]


def describe(outcome: Outcome) -> str:
    """Return the verdict lines and results of a case, for assertion messages."""
    lines = []
    for name in ("record", "replay", "perturbed"):
        run = getattr(outcome, name)
        if run is not None:
            lines.append(f"{name}: exit {run.returncode}, verdict {run.verdict_line!r}, "
                         f"results {result_lines(run.stdout)}\n  stderr tail: {run.stderr[-600:]!r}")
    return "\n".join(lines)


@pytest.mark.parametrize("case", params())
def test_corpus_verdict(case: Case, tmp_path: Path) -> None:
    outcome = run_case(case, tmp_path)
    record, replay, perturbed = outcome.record, outcome.replay, outcome.perturbed
    context = describe(outcome)

    # The script is really nondeterministic, and the recording ran as designed.
    assert outcome.plain_differ, [result_lines(run.stdout) for run in outcome.plain]
    assert record is not None and record.returncode == 0, context
    if case.interrupt_on:
        assert record.interrupted and "Exiting from training early" in record.stdout, context
    assert replay is not None and perturbed is not None, context

    # Unperturbed replay.
    if case.name in UNCHECKED_BY_STEPS:
        # No optimizer step hook sees this training: REPRODUCED only if the final state was compared
        # and equal; training in unrecorded processes is UNVERIFIED.
        # (Hogwild's lock-free updates race, so a recorded-children replay may honestly diverge.)
        assert replay.verdict != REPRODUCED or outcome.results_equal, context
        honest = case.replay_ok + ((DIVERGED,) if not outcome.results_equal else ())
        assert replay.verdict in honest, context
    else:
        assert replay.verdict in case.replay_ok, context  # REPRODUCED (numpy-only may be UNVERIFIED)
    if replay.verdict == REPRODUCED:
        assert outcome.results_equal, context
        # What a terminal finally shows, durations masked; byte-equal where nothing on stdout is timed.
        assert rendered(replay.stdout) == rendered(record.stdout), context
        if not case.timing_on_stdout:
            assert replay.stdout == record.stdout, context
        assert replay.returncode == 0, context
    elif replay.verdict == UNVERIFIED:
        assert replay.returncode == ExitCode.UNVERIFIED, context
    elif replay.verdict == DIVERGED:
        assert replay.returncode == 3, context

    # Perturbed replay: the weights really changed, and detrun must say so at the right step.
    assert result_lines(perturbed.stdout) != result_lines(record.stdout), context
    assert perturbed.verdict in case.perturbed_ok, context
    if perturbed.verdict == DIVERGED:
        if case.per_step:
            assert perturbed.step == case.perturb_step, context
        else:
            assert perturbed.step is None or perturbed.step >= case.perturb_step, context
        assert perturbed.returncode == 3, context
