"""`detrun explain`: the first op whose output differs, named with its line; nothing to explain when it reproduces.

The planted script is seeded everywhere but one op of step 3, which adds a value from the clock
(`clock`) or from an environment variable detrun does not set (`env`); `none` plants nothing.
Each "names the op" is paired with a run where nothing differs, so the explanation can fail.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import detrun, python

PLANTED = '''
import os, sys, time
import torch

mode = sys.argv[1]
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
x = torch.randn(64, 8)
y = x.sum(1, keepdim=True)


def planted(h):
    if mode == "clock":
        return h + (time.perf_counter_ns() % 997 + 1) * 1e-6  # PLANTED
    return h + float(os.environ.get("TORCH_PLANTED_SHIFT", "0"))  # ENV


for step in range(4):
    h = model[1](model[0](x))
    out = model[2](planted(h) if step == 2 and mode != "none" else h)
    loss = (out - y).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.8f}")
'''


def _line(marker: str) -> int:
    return next(number for number, text in enumerate(PLANTED.splitlines(), 1) if marker in text)


def _explain(workdir: Path, trace: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict, str]:
    result = detrun("explain", "--json", "why.json", trace, "train.py", *args, cwd=workdir, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads((workdir / "why.json").read_text())
    assert report["exit_code"] == result.returncode, result.stderr
    return result.returncode, report, result.stderr


def test_explain_names_the_planted_op_from_the_recorded_op_digests(workdir: Path) -> None:
    (workdir / "train.py").write_text(PLANTED)
    # Can fail: the script itself differs from run to run.
    runs = {python("train.py", "clock", cwd=workdir).stdout for _ in range(2)}
    assert len(runs) == 2
    recorded = detrun("record", "-q", "--op-digests", "4", "-o", "t.zst", "train.py", "clock", cwd=workdir)
    assert recorded.returncode == 0, recorded.stderr
    code, report, stderr = _explain(workdir, "t.zst")
    assert code == 3 and report["status"] == "differs from the recording", stderr
    # The replay's own verdict names the op as the likely cause, from the op digests alone.
    assert report["verdict"].startswith("DIVERGED at step 3") and "aten::add.Tensor (cpu)" in report["verdict"]
    op = report["op"]
    assert (op["name"], op["device"], op["step"]) == ("aten::add.Tensor", "cpu", 3), stderr
    assert op["site"] == f"{workdir / 'train.py'}:{_line('# PLANTED')}"
    assert f"train.py:{_line('# PLANTED')}: return h + (time.perf_counter_ns()" in stderr
    assert report["patch"] is None and report["knowledge_base"]
    assert report["nondeterministic_here"] is True and "two replays on this machine differ there" in stderr


def test_explain_without_op_digests_compares_two_replays(workdir: Path) -> None:
    (workdir / "train.py").write_text(PLANTED)
    assert detrun("record", "-q", "-o", "t.zst", "train.py", "clock", cwd=workdir).returncode == 0
    code, report, stderr = _explain(workdir, "t.zst")
    assert code == 3 and report["status"] == "nondeterministic op", stderr
    assert report["op"]["name"] == "aten::add.Tensor"
    assert report["op"]["site"].endswith(f"train.py:{_line('# PLANTED')}")
    assert "two replays on this machine differ there" in stderr


@pytest.mark.parametrize("op_digests", ["0", "4"])
def test_explain_points_at_the_environment_when_two_replays_agree(workdir: Path, op_digests: str) -> None:
    (workdir / "train.py").write_text(PLANTED)
    env = {"TORCH_PLANTED_SHIFT": "0.001"}
    recorded = detrun("record", "-q", "--op-digests", op_digests, "-o", "t.zst", "train.py", "env", cwd=workdir,
                      env=env)
    assert recorded.returncode == 0, recorded.stderr
    code, report, stderr = _explain(workdir, "t.zst")
    assert code == 3 and report["nondeterministic_here"] is False, stderr
    if op_digests == "0":
        assert report["status"] == "environment" and report["op"] is None, stderr
    else:  # the recording names the op; the two replays say it is the environment's doing
        assert report["status"] == "differs from the recording", stderr
        assert report["op"]["site"].endswith(f"train.py:{_line('# ENV')}")
    assert any("TORCH_PLANTED_SHIFT" in item for item in report["environment"]), report
    assert "this machine is deterministic here" in stderr


def test_explain_has_nothing_to_explain_when_the_replay_reproduces(workdir: Path) -> None:
    (workdir / "train.py").write_text(PLANTED)
    assert detrun("record", "-q", "--op-digests", "4", "-o", "t.zst", "train.py", "none", cwd=workdir).returncode == 0
    code, report, stderr = _explain(workdir, "t.zst")
    assert code == 0 and report["status"] == "reproduced" and report["op"] is None, stderr
    # The op digests were compared and matched: no departure noted beside the verdict.
    assert report["verdict"].startswith("REPRODUCED (4 steps") and "departed" not in report["verdict"]


def test_explain_refuses_a_missing_trace(workdir: Path) -> None:
    (workdir / "train.py").write_text(PLANTED)
    result = detrun("explain", "missing.zst", "train.py", cwd=workdir)
    assert result.returncode == 2 and result.stderr.strip().startswith("detrun: error:"), result.stderr
