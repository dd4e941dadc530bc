"""Files: inputs fingerprinted and named as the likely cause, outputs compared by tensor, resumed runs replayable."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from conftest import SCRIPTS, detrun, python, verdict

TRAIN = SCRIPTS / "resume_train.py"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Return a directory with the training script and a 64-row CSV dataset."""
    shutil.copy(TRAIN, tmp_path / "train.py")
    (tmp_path / "data").mkdir()
    rows = random.Random(7)
    (tmp_path / "data" / "train.csv").write_text(
        "".join(f"{a:.4f},{b:.4f},{int(a > b)}\n" for a, b in ((rows.random(), rows.random()) for _ in range(64))))
    return tmp_path


def _replay(trace: str, cwd: Path, *args: str, **kwargs: object) -> str:
    replayed = detrun("replay", *args, trace, "train.py", cwd=cwd, **kwargs)  # type: ignore[arg-type]
    return verdict(replayed.stderr)


def test_a_resumed_run_replays_from_the_checkpoint_it_overwrote_and_checks_the_one_it_writes(project: Path) -> None:
    # The can-fail side: two plain runs train differently (nothing is seeded).
    assert python("train.py", cwd=project).stdout != python("train.py", cwd=project).stdout
    assert detrun("record", "-q", "-o", "first.zst", "train.py", cwd=project).returncode == 0
    started_from = (project / "runs" / "last.pt").read_bytes()
    resumed = detrun("record", "-q", "-o", "resumed.zst", "train.py", "--resume", cwd=project)
    assert resumed.returncode == 0, resumed.stderr
    # The resumed recording overwrote the checkpoint it started from; the version it read is kept.
    assert (project / "runs" / "last.pt").read_bytes() != started_from
    assert [p.read_bytes() for p in (project / "resumed.zst.inputs").iterdir()] == [started_from]
    recorded_files = {name: (project / "runs" / name).read_bytes() for name in ("last.pt", "log.csv")}
    for options in ((), ("--outputs-dir", "replayed")):
        line = _replay("resumed.zst", project, *options)
        assert line.startswith("detrun: REPRODUCED") and "written files" in line, line
        # The replay wrote both files again, and put the recording's back.
        assert {name: (project / "runs" / name).read_bytes() for name in recorded_files} == recorded_files
    assert sorted(p.name for p in (project / "replayed" / "runs").iterdir()) == ["last.pt", "log.csv"]
    replayed_log = (project / "replayed" / "runs" / "log.csv").read_bytes()  # the recording's, and its rows
    assert replayed_log.startswith(recorded_files["log.csv"]) and len(replayed_log) > len(recorded_files["log.csv"])

    shown = detrun("show", "resumed.zst", cwd=project).stdout
    assert "data/train.csv" in shown and "runs/last.pt" in shown and "kept beside the trace" in shown, shown
    summary = json.loads(detrun("show", "--json", "resumed.zst", cwd=project).stdout)
    assert {entry["path"] for entry in summary["inputs"]} == {"data/train.csv", "runs/last.pt"}

    # The model trains identically; only the saved copy of its weights is perturbed.
    line = _replay("resumed.zst", project, env={"PERTURB": "1"})
    assert line.startswith("detrun: DIVERGED: output runs/last.pt: tensor 'conv1.weight' differs"), line

    # Without a kept copy the replay cannot start where the recording did: it says what to restore.
    unkept = detrun("record", "-q", "--keep-inputs", "0", "-o", "unkept.zst", "train.py", "--resume", cwd=project)
    assert unkept.returncode == 0, unkept.stderr
    assert not (project / "unkept.zst.inputs").exists()
    line = _replay("unkept.zst", project)
    assert line.startswith("detrun: DIVERGED"), line
    assert "likely cause: runs/last.pt changed since the recording" in line, line
    assert "restore the version it read (sha256 " in line and "beyond record --keep-inputs" in line, line


NUMPY_TRAIN = """\
import numpy as np
rows = np.loadtxt("data/train.csv", delimiter=",")
x, y = rows[:, :2], rows[:, 2]
w = np.random.randn(2)  # unseeded
for _ in range(50):
    w -= 0.5 * x.T @ (1 / (1 + np.exp(-(x @ w))) - y) / len(y)
print(f"w {w[0]:.6f} {w[1]:.6f}")
"""


def test_a_changed_line_of_the_csv_is_the_likely_cause(project: Path) -> None:
    (project / "fit.py").write_text(NUMPY_TRAIN)
    assert python("fit.py", cwd=project).stdout != python("fit.py", cwd=project).stdout
    assert detrun("record", "-q", "fit.py", cwd=project).returncode == 0
    unchanged = verdict(detrun("replay", "trace.zst", "fit.py", cwd=project).stderr)
    assert unchanged.startswith("detrun: REPRODUCED") and "departed" not in unchanged, unchanged
    csv = project / "data" / "train.csv"
    lines = csv.read_text().splitlines(keepends=True)
    lines[5] = "0.9999,0.0001,1\n"
    csv.write_text("".join(lines))
    line = verdict(detrun("replay", "trace.zst", "fit.py", cwd=project).stderr)
    assert line.startswith("detrun: DIVERGED"), line
    assert "likely cause: data/train.csv changed since the recording (sha256 " in line, line
    assert line.endswith(", 1 line differs)"), line
