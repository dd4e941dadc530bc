"""`detrun check`: record + replays judged by the paper's criteria; passes an unseeded run, fails unrecorded noise.

Each test shows that plain runs differ (so the check can fail) before what `check` says.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import detrun, python

UNSEEDED = '''
import torch
model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(32, 6)
y = x.sum(1, keepdim=True)
for step in range(12):
    loss = (model(x) - y).pow(2).mean()
    optimizer.zero_grad(); loss.backward(); optimizer.step()
print(f"final loss {loss.item():.8f}")
'''

# Seeded, but a custom op that detrun does not record adds noise from the clock into a weight every step.
NOISY = '''
import time, torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(32, 6)
y = x.sum(1, keepdim=True)

def jitter(weight):
    with torch.no_grad():
        weight[0, 0] += (time.perf_counter_ns() % 997 + 1) * 1e-7

for step in range(12):
    loss = (model(x) - y).pow(2).mean()
    optimizer.zero_grad(); loss.backward(); optimizer.step()
    jitter(model[0].weight)
print(f"final loss {loss.item():.8f}")
'''


def _rows(report: dict[str, object]) -> dict[str, dict[str, object]]:
    return {row["name"]: row for row in report["criteria"]}  # type: ignore[index,union-attr]


def test_check_passes_an_unseeded_script_whose_plain_runs_differ(workdir: Path) -> None:
    (workdir / "train.py").write_text(UNSEEDED)
    result = detrun("check", "--plain", "2", "--json", "check.json", "--keep", "kept", "train.py", cwd=workdir)
    assert result.returncode == 0, result.stderr
    report = json.loads((workdir / "check.json").read_text())
    assert report["verdict"] == "REPRODUCED" and report["exit_code"] == 0
    rows = _rows(report)
    for name in ("loss at every step", "parameters during training", "final weights", "stdout (masked)", "exit status"):
        assert rows[name]["checked"] and rows[name]["holds"], rows[name]
    assert "12 step losses" in str(rows["loss at every step"]["detail"])
    # Never a false pass: what detrun does not record is a row that says so.
    assert rows["files written"]["checked"] is False and rows["files written"]["result"] == "not checked"
    assert report["plain_runs"]["differ"] is True  # the check could have failed
    assert "plain runs differ: yes" in result.stderr and "detrun: REPRODUCED in 2 runs" in result.stderr
    kept = workdir / "kept"
    assert (kept / "trace.zst").exists()
    assert (kept / "run1.stdout").read_text() == (kept / "run2.stdout").read_text()  # record == replay
    assert (kept / "plain1.stdout").read_text() != (kept / "plain2.stdout").read_text()
    assert result.stdout == ""  # each run's stdout went to its file


def test_check_fails_on_noise_detrun_does_not_record(workdir: Path) -> None:
    (workdir / "noisy.py").write_text(NOISY)
    first, second = python("noisy.py", cwd=workdir).stdout, python("noisy.py", cwd=workdir).stdout
    assert first and first != second  # seeded, yet two plain runs differ: the clock noise
    result = detrun("check", "-q", "--json", "check.json", "noisy.py", cwd=workdir)
    assert result.returncode == 3, result.stderr
    report = json.loads((workdir / "check.json").read_text())
    assert report["verdict"] == "DIVERGED"
    rows = _rows(report)
    assert rows["parameters during training"]["holds"] is False
    # The noise lands after step 1's digest (taken at optimizer.step()), so step 2 is the first to differ.
    assert "replay 1 at step 2: parameter" in str(rows["parameters during training"]["detail"])
    assert rows["loss at every step"]["holds"] is False
    assert rows["final weights"]["holds"] is False and rows["stdout (masked)"]["holds"] is False
    line = result.stderr.strip().splitlines()[-1]
    assert re.match(r"detrun: DIVERGED: (loss at every step|parameters during training): replay 1 at step 2: ", line), line


def test_check_refuses_bad_input(workdir: Path) -> None:
    missing = detrun("check", "missing.py", cwd=workdir)
    assert missing.returncode == 2 and "no such script" in missing.stderr
    (workdir / "train.py").write_text(UNSEEDED)
    one_plain = detrun("check", "--plain", "1", "train.py", cwd=workdir)
    assert one_plain.returncode == 2 and "--plain needs at least 2" in one_plain.stderr
    (workdir / "full").mkdir()
    (workdir / "full" / "x").write_text("")
    full = detrun("check", "--keep", "full", "train.py", cwd=workdir)
    assert full.returncode == 2 and "new or empty directory" in full.stderr
