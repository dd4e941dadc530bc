"""Every source of nondeterminism is recorded and fed back; departures are divergences with a call site."""
from __future__ import annotations

from pathlib import Path

from conftest import SCRIPTS, detrun, python, verdict

ALL_SOURCES = str(SCRIPTS / "all_sources.py")


def _values(stdout: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in stdout.splitlines())


def test_every_source_differs_plainly_and_replays_exactly(workdir: Path) -> None:
    first, second = (_values(python(ALL_SOURCES, cwd=workdir).stdout) for _ in range(2))
    # Everything but the isinstance check must change between two plain runs; otherwise the test
    # would prove nothing about that source.
    changing = {key for key in first if first[key] != second[key]}
    assert changing == set(first) - {"isinstance"}, sorted(set(first) - changing)

    recorded = detrun("record", ALL_SOURCES, cwd=workdir)
    assert recorded.returncode == 0, recorded.stderr
    for _ in range(2):
        replayed = detrun("replay", "trace.zst", ALL_SOURCES, cwd=workdir)
        # No model, so nothing of a training state to verify: UNVERIFIED, but every value fed back.
        assert replayed.returncode == 5, replayed.stderr
        assert verdict(replayed.stderr).startswith("detrun: UNVERIFIED"), replayed.stderr
        assert _values(replayed.stdout) == _values(recorded.stdout)
        assert _values(replayed.stdout)["isinstance"] == "True"
        assert "DIVERGED" not in replayed.stderr, replayed.stderr


def test_changed_call_order_is_reported_with_call_site(workdir: Path) -> None:
    script = workdir / "order.py"
    script.write_text(
        "import os, random\n"
        "if os.environ.get('SWAP'):\n"
        "    random.seed(7)\n"
        "print(os.urandom(4).hex())\n"
        "random.seed(os.urandom(4))\n"
    )
    assert detrun("record", "-q", str(script), cwd=workdir).returncode == 0
    same = detrun("replay", "trace.zst", cwd=workdir)
    assert "DIVERGED" not in same.stderr and "departed" not in same.stderr
    swapped = detrun("replay", "trace.zst", cwd=workdir, env={"SWAP": "1"})
    line = verdict(swapped.stderr)
    # An event mismatch is a cause, never the verdict: this script has no training state to check.
    assert line.startswith("detrun: UNVERIFIED"), line
    assert ("the replay departed from the recorded events: random.seed() called at order.py:3, but the "
            "recording has it at order.py:5") in line, line


def test_extra_calls_and_missing_calls_are_reported(workdir: Path) -> None:
    script = workdir / "extra.py"
    script.write_text("import os\nfor _ in range(int(os.environ.get('N', '2'))):\n    os.urandom(2)\n")
    assert detrun("record", "-q", str(script), cwd=workdir).returncode == 0
    more = detrun("replay", "trace.zst", cwd=workdir, env={"N": "3"})
    assert "has no counterpart in the recording" in verdict(more.stderr)
    fewer = detrun("replay", "trace.zst", cwd=workdir, env={"N": "1"})
    assert "1 more os.entropy event(s) that the replay never asked for" in verdict(fewer.stderr)


# torch seeds each CUDA device's default generator from OS entropy when CUDA starts; detrun queues
# the recorded initial seed for every device instead (on a CPU build the queue is all there is).
CUDA_SEED_PROBE = (
    "import torch\n"
    "tracker = getattr(torch.cuda, '_lazy_seed_tracker', None)\n"
    "calls = [call for call in tracker.get_calls() if call] if tracker is not None else []\n"
    "seeds = [cell.cell_contents for callback, _ in calls for cell in (callback.__closure__ or ())\n"
    "         if type(cell.cell_contents) is int]\n"
    "print(f'cuda seeds queued: {seeds == [torch.initial_seed()]}')\n"
)


def test_the_cuda_generators_are_seeded_from_the_recorded_initial_seed(workdir: Path) -> None:
    (workdir / "cuda_seed.py").write_text(CUDA_SEED_PROBE)
    assert python("cuda_seed.py", cwd=workdir).stdout == "cuda seeds queued: False\n"  # torch alone: OS entropy
    recorded = detrun("record", "-q", "cuda_seed.py", cwd=workdir)
    assert recorded.stdout == "cuda seeds queued: True\n", recorded.stderr
    replayed = detrun("replay", "trace.zst", "cuda_seed.py", cwd=workdir)
    assert replayed.stdout == "cuda seeds queued: True\n", replayed.stderr
