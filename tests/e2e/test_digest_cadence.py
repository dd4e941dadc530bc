"""`--digest-every N|auto`: fewer parameter digests, and still no divergence missed.

The script trains a model with one parameter the loss never sees (it only decays, through
AdamW's weight decay): a change to it shows in no loss, only in a parameter digest. So a nudge to
it between two digests must be caught by the next digest, and one after the last digest by the
digest detrun takes after the last step.
"""
from __future__ import annotations

from pathlib import Path

from conftest import detrun, python, verdict
from detrun.trace import read_trace

DECAYING = """import os, random
import torch
from torch import nn

steps = int(os.environ.get("STEPS", "35"))
nudge = int(os.environ.get("NUDGE_AT", "0"))
model = nn.Linear(4, 1)
hidden = nn.Parameter(torch.randn(3))  # unseeded; only weight decay moves it
optimizer = torch.optim.AdamW([*model.parameters(), hidden], lr=0.01, weight_decay=0.1)
x = torch.randn(64, 4)
for step in range(1, steps + 1):
    loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean() + 0.0 * hidden.sum()
    optimizer.zero_grad()
    loss.backward()
    if step == nudge:
        with torch.no_grad():
            hidden[0] += 1e-3
    optimizer.step()
print("loss", round(loss.item(), 6))  # not `hidden`: only the digests can see it
"""


def _digested_steps(trace: Path) -> list[int]:
    return [i + 1 for i, event in enumerate(read_trace(str(trace)).of("step")) if event[2] is not None]


def test_auto_cadence_reproduces_and_digests_the_first_steps(tmp_path: Path) -> None:
    (tmp_path / "decay.py").write_text(DECAYING)
    plain = [python("decay.py", cwd=tmp_path, env={"STEPS": "60"}).stdout for _ in range(2)]
    assert plain[0] != plain[1]  # the check can fail: unseeded
    assert detrun("record", "-q", "--digest-every", "auto", "decay.py", cwd=tmp_path, env={"STEPS": "60"}
                  ).returncode == 0
    digested = _digested_steps(tmp_path / "trace.zst")
    assert digested[:5] == [1, 2, 3, 4, 5], digested
    settings = read_trace(str(tmp_path / "trace.zst")).header["settings"]
    assert settings["digest_every"] == 0 and settings["digest_last_step"] is True
    replay = detrun("replay", "trace.zst", "decay.py", cwd=tmp_path, env={"STEPS": "60"})
    assert replay.returncode == 0 and "REPRODUCED" in verdict(replay.stderr), replay.stderr
    assert "digested within 0.25% of the step time" in detrun("show", "trace.zst", cwd=tmp_path).stdout


def test_a_change_no_loss_shows_is_caught_at_the_next_digest_or_after_the_last_step(tmp_path: Path) -> None:
    (tmp_path / "decay.py").write_text(DECAYING)
    assert detrun("record", "-q", "--digest-every", "10", "decay.py", cwd=tmp_path).returncode == 0
    assert _digested_steps(tmp_path / "trace.zst") == [1, 10, 20, 30]

    between = detrun("replay", "trace.zst", "decay.py", cwd=tmp_path, env={"NUDGE_AT": "13"})
    line = verdict(between.stderr)
    assert between.returncode == 3 and "DIVERGED at step 20" in line and "differ" in line, between.stderr

    # After step 30 no step is digested: the digest after the last step (35) catches it.
    # (The final state sees the global `hidden` too: -v lists every difference found.)
    after = detrun("replay", "-v", "trace.zst", "decay.py", cwd=tmp_path, env={"NUDGE_AT": "33"})
    assert after.returncode == 3 and "DIVERGED at step 35" in verdict(after.stderr), after.stderr
    assert "the final step digest differs" in after.stderr, after.stderr

    untouched = detrun("replay", "trace.zst", "decay.py", cwd=tmp_path)
    assert untouched.returncode == 0 and "REPRODUCED" in verdict(untouched.stderr), untouched.stderr
