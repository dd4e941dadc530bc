"""`detrun diff`: the first differing step of two recordings, and a resumed run against the uninterrupted one.

Every "equal" here is paired with a "differ" on the same scripts, so the comparison can fail.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import detrun

UNSEEDED = '''
import torch
model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(32, 6)
for step in range(6):
    loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
    optimizer.zero_grad(); loss.backward(); optimizer.step()
print(f"final loss {loss.item():.8f}")
'''

# Trains 10 steps on data and dropout drawn from the unseeded RNGs; saves a checkpoint (model,
# optimizer, the Python, numpy and torch RNG states) after step 4; `--resume` starts from it.
RESUMABLE = '''
import random, sys
import numpy as np
import torch

def main():
    resume = "--resume" in sys.argv
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = 0
    if resume:
        checkpoint = torch.load("ckpt.pt", weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start = checkpoint["step"]
        if "--no-rng" not in sys.argv:
            random.setstate(checkpoint["random"])
            np.random.set_state(checkpoint["numpy"])
            torch.set_rng_state(checkpoint["torch"])
    for step in range(start + 1, 11):
        x = torch.randn(16, 6) + random.random()
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean() + float(np.random.rand()) * 0
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        if step == 4 and not resume:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                        "random": random.getstate(), "numpy": np.random.get_state(),
                        "torch": torch.get_rng_state()}, "ckpt.pt")
    print(f"final loss {loss.item():.8f}")

main()
'''


def _record(workdir: Path, output: str, script: str, *args: str) -> None:
    result = detrun("record", "-q", "-o", output, script, *args, cwd=workdir)
    assert result.returncode == 0, result.stderr


def _diff(workdir: Path, *args: str) -> dict[str, object]:
    result = detrun("diff", "--json", *args, cwd=workdir)
    report = json.loads(result.stdout)
    assert result.returncode == report["exit_code"], result.stderr
    return report


def test_diff_finds_the_first_differing_step_of_two_unseeded_recordings(workdir: Path) -> None:
    (workdir / "train.py").write_text(UNSEEDED)
    _record(workdir, "a.zst", "train.py")
    _record(workdir, "b.zst", "train.py")
    same = _diff(workdir, "a.zst", "a.zst")
    assert same["status"] == "equal" and same["exit_code"] == 0 and same["compared"] == 6
    report = _diff(workdir, "a.zst", "b.zst")
    assert report["status"] == "differ" and report["exit_code"] == 3
    first = report["first"]
    assert first["step"] == 1 and "loss" in first["parts"] and "parameters" in first["parts"]
    assert "'0.weight'" in first["message"]  # named from the recorded parameter names
    assert any(c["what"] == "setting hashseed" for c in report["settings"])  # each recording picked one
    assert report["final"] and "module" in report["final"]
    text = detrun("diff", "a.zst", "b.zst", cwd=workdir)
    assert text.returncode == 3
    assert "detrun: first differing step: step 1: parameters '0.weight'" in text.stderr
    assert "can change bits: setting hashseed" in text.stderr


def test_a_resumed_run_matches_the_uninterrupted_one_only_when_it_restores_the_rng(workdir: Path) -> None:
    (workdir / "train.py").write_text(RESUMABLE)
    _record(workdir, "full.zst", "train.py")  # also writes ckpt.pt after step 4
    _record(workdir, "resumed.zst", "train.py", "--resume")
    _record(workdir, "no_rng.zst", "train.py", "--resume", "--no-rng")
    resumed = _diff(workdir, "--offset-b", "4", "full.zst", "resumed.zst")
    assert resumed["status"] == "equal", resumed
    assert resumed["compared"] == 6 and resumed["final_compared"] and resumed["length"] is None
    no_rng = _diff(workdir, "--offset-b", "4", "full.zst", "no_rng.zst")
    assert no_rng["status"] == "differ" and no_rng["exit_code"] == 3
    assert no_rng["first"]["step"] == 5 and no_rng["first"]["step_b"] == 1  # the first step after the checkpoint
    unaligned = _diff(workdir, "full.zst", "resumed.zst")  # without the offset, step 1 is compared with step 1
    assert unaligned["status"] == "differ" and unaligned["first"]["step"] == 1


def test_plot_is_a_png(workdir: Path) -> None:
    pytest.importorskip("matplotlib")
    (workdir / "train.py").write_text(UNSEEDED)
    _record(workdir, "a.zst", "train.py")
    _record(workdir, "b.zst", "train.py")
    result = detrun("diff", "--plot", "loss.png", "a.zst", "b.zst", cwd=workdir)
    assert result.returncode == 3, result.stderr
    assert (workdir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_diff_refuses_bad_input(workdir: Path) -> None:
    (workdir / "junk.zst").write_bytes(b"not a trace")
    result = detrun("diff", "junk.zst", "missing.zst", cwd=workdir)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detrun: error: "), result.stderr
