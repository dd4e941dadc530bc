"""The core promise: an unseeded run differs every time, and record → replay is bit-identical."""
from __future__ import annotations

from pathlib import Path

from conftest import EXAMPLES, detrun, python, verdict, weights_sha

EXAMPLE = str(EXAMPLES / "train_unseeded.py")


def test_plain_runs_differ_and_replays_reproduce(workdir: Path) -> None:
    plain = [python(EXAMPLE, cwd=workdir) for _ in range(2)]
    for result in plain:
        assert result.returncode == 0, result.stderr
    assert weights_sha(plain[0].stdout) != weights_sha(plain[1].stdout), "the example is not nondeterministic"

    recorded = detrun("record", EXAMPLE, cwd=workdir)
    assert recorded.returncode == 0, recorded.stderr
    assert (workdir / "trace.zst").exists()
    assert "recorded 200 steps" in recorded.stderr

    replays = [detrun("replay", "trace.zst", EXAMPLE, cwd=workdir) for _ in range(2)]
    for result in replays:
        assert result.returncode == 0, result.stderr
        assert verdict(result.stderr).startswith("detrun: REPRODUCED (200 steps"), result.stderr
        # The script's own stdout is untouched and identical, down to the uuid4 run name.
        assert result.stdout == recorded.stdout
    assert weights_sha(replays[0].stdout) == weights_sha(recorded.stdout) == weights_sha(replays[1].stdout)


def test_perturbed_replay_names_the_step_and_parameter(workdir: Path) -> None:
    assert detrun("record", "-q", EXAMPLE, cwd=workdir).returncode == 0
    result = detrun("replay", "trace.zst", EXAMPLE, cwd=workdir, env={"PERTURB_STEP": "137"})
    line = verdict(result.stderr)
    assert "REPRODUCED" not in result.stderr
    assert line.startswith("detrun: DIVERGED at step 137: parameter 'fc2.weight' differs"), line
    assert result.returncode == 3  # DIVERGED exits 3 when the script itself exited 0

    strict = detrun("replay", "--strict", "trace.zst", EXAMPLE, cwd=workdir, env={"PERTURB_STEP": "50"})
    assert strict.returncode == 3
    assert "DIVERGED at step 50: parameter 'fc2.weight'" in strict.stderr
    assert "weights sha256" not in strict.stdout  # it stopped there


def test_replay_without_recorded_optimizer_steps_is_unverified(workdir: Path) -> None:
    script = workdir / "no_steps.py"
    script.write_text("import random\nprint(random.random())\n")
    recorded = detrun("record", str(script), cwd=workdir)
    assert recorded.returncode == 0, recorded.stderr
    replayed = detrun("replay", "trace.zst", cwd=workdir)
    assert replayed.stdout == recorded.stdout
    # The RNG state at exit was compared, but it is not training state: nothing was verified.
    line = verdict(replayed.stderr)
    assert line.startswith("detrun: UNVERIFIED") and "nothing of the training state could be checked" in line, line
    assert replayed.returncode == 5
