"""Honest verdicts: a run whose results differ is never REPRODUCED, and a replay ends where its recording ended.

Each test first shows that two plain runs differ (so the check can fail), then what the replay says.
"""
from __future__ import annotations

import json
from pathlib import Path

from conftest import detrun, python, verdict

MANUAL_UPDATES = '''
import time, torch
from torch.utils.data import DataLoader, TensorDataset
x = torch.linspace(-1, 1, 64).reshape(16, 4)
y = x.sum(1, keepdim=True)

def main():
    w = torch.zeros(4, 1, requires_grad=True)
    lr = 0.1 + (time.time_ns() % 1000) / 1e6   # a value detrun does not feed back
    for xb, yb in DataLoader(TensorDataset(x, y), batch_size=4):
        loss = ((xb @ w - yb) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            w -= lr * w.grad
            w.grad.zero_()
    return w

w = main()
'''


def test_training_by_hand_is_checked_through_its_losses(workdir: Path) -> None:
    (workdir / "manual.py").write_text(MANUAL_UPDATES + "print(w.flatten().tolist())\n")
    assert python("manual.py", cwd=workdir).stdout != python("manual.py", cwd=workdir).stdout
    (workdir / "quiet.py").write_text(MANUAL_UPDATES)  # prints nothing: only the state can tell
    assert detrun("record", "-q", "quiet.py", cwd=workdir).returncode == 0
    replayed = detrun("replay", "trace.zst", "quiet.py", cwd=workdir)
    line = verdict(replayed.stderr)
    assert line.startswith("detrun: DIVERGED: the loss of backward() call #2 differs"), line
    assert replayed.returncode == 3


HOGWILD = '''
import time, torch, torch.multiprocessing as mp

def train(model, seed):
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(10):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        optimizer.zero_grad(); loss.backward(); optimizer.step()

if __name__ == "__main__":
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    model.share_memory()
    workers = [mp.Process(target=train, args=(model, time.time_ns() % 1000 + rank)) for rank in range(2)]
    for p in workers: p.start()
    for p in workers: p.join()
    print(model.weight.sum().item())
'''


def test_training_in_unrecorded_children_is_never_reproduced(workdir: Path) -> None:
    (workdir / "hogwild.py").write_text(HOGWILD)
    assert python("hogwild.py", cwd=workdir).stdout != python("hogwild.py", cwd=workdir).stdout
    assert detrun("record", "-q", "hogwild.py", cwd=workdir).returncode == 0
    replayed = detrun("replay", "trace.zst", "hogwild.py", cwd=workdir)
    line = verdict(replayed.stderr)
    assert "REPRODUCED" not in line, line
    assert "multiprocessing.Process(target=train)" in line, line


INTERRUPTED = '''
import os, signal, time, torch
torch.manual_seed(time.time_ns() % 2**31)
model = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
try:
    for step in range(100000):
        loss = model(torch.randn(16, 8)).pow(2).mean()
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        if step % 20 == 0:
            print(f"step {step} loss {loss.item():.6f}")
        if step == 57 and os.environ.get("CTRL_C_AT_57"):
            os.kill(os.getpid(), signal.SIGINT)   # what a user's Ctrl-C does, at a known step
except KeyboardInterrupt:
    print("Exiting from training early")
print("weights", model.weight.sum().item())
'''


def test_a_caught_ctrl_c_ends_the_replay_at_the_same_step(workdir: Path) -> None:
    (workdir / "lm.py").write_text(INTERRUPTED)
    env = {"CTRL_C_AT_57": "1"}
    first, second = (python("lm.py", cwd=workdir, env=env).stdout for _ in range(2))
    assert first != second and "Exiting from training early" in first
    recorded = detrun("record", "-q", "lm.py", cwd=workdir, env=env)
    assert recorded.returncode == 0, recorded.stderr
    replayed = detrun("replay", "--json", "v.json", "trace.zst", "lm.py", cwd=workdir)  # no Ctrl-C this time
    assert replayed.stdout == recorded.stdout
    assert verdict(replayed.stderr).startswith("detrun: REPRODUCED (58 steps"), replayed.stderr
    assert json.loads((workdir / "v.json").read_text())["checks"]["steps"] == 58


def test_an_incomplete_recording_without_steps_is_unverified(workdir: Path) -> None:
    script = workdir / "killed.py"
    script.write_text(
        "import os, signal, torch\n"
        "if os.environ.get('DIE'):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "model = torch.nn.Linear(2, 1)\n"
        "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for _ in range(200):\n"
        "    optimizer.zero_grad(); model(torch.ones(1, 2)).sum().backward(); optimizer.step()\n"
    )
    recorded = detrun("record", "-q", "killed.py", cwd=workdir, env={"DIE": "1"})
    assert recorded.returncode in (137, -9)
    replayed = detrun("replay", "trace.zst", "killed.py", cwd=workdir)
    line = verdict(replayed.stderr)
    assert line.startswith("detrun: UNVERIFIED (the recording ended (killed by SIGKILL) before"), line
    assert replayed.returncode == 5


def test_a_failing_hook_makes_the_verdict_unverified_and_changes_nothing(workdir: Path) -> None:
    script = workdir / "odd.py"
    script.write_text(
        "import torch\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Linear(2, 1)\n"
        "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for _ in range(3):\n"
        "    optimizer.zero_grad(); model(torch.ones(1, 2)).sum().backward(); optimizer.step()\n"
        "object.__setattr__(model, '_buffers', 7)  # breaks detrun's final-state digest, not the script\n"
        "print('done', model.weight.sum().item())\n"
    )
    plain = python("odd.py", cwd=workdir)
    recorded = detrun("record", "-q", "odd.py", cwd=workdir)
    assert recorded.stdout == plain.stdout and recorded.returncode == 0
    assert "internal error in the final-state digest" in recorded.stderr
    replayed = detrun("replay", "trace.zst", "odd.py", cwd=workdir)
    line = verdict(replayed.stderr)
    assert line.startswith("detrun: UNVERIFIED (a detrun hook failed"), line
    assert replayed.stdout == plain.stdout and replayed.returncode == 5
