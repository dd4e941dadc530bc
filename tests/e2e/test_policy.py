"""The determinism policy is applied in record and replay alike, and recorded in the trace."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import pytest

from conftest import EXAMPLES, detrun, verdict, weights_sha

CNN = str(EXAMPLES / "cnn_adaptive_pool.py")


def test_strict_policy_is_recorded_and_replayed(tmp_path: Path) -> None:
    recorded = detrun("record", "-q", CNN, cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    replayed = detrun("replay", "trace.zst", CNN, cwd=tmp_path)
    assert verdict(replayed.stderr).startswith("detrun: REPRODUCED"), replayed.stderr
    assert weights_sha(replayed.stdout) == weights_sha(recorded.stdout)
    from detrun.trace import read_trace

    trace = read_trace(str(tmp_path / "trace.zst"))
    assert trace.header["settings"]["policy"] == "strict"
    (policy,) = trace.of("policy")
    assert policy["policy"] == "strict"
    assert "adaptive_avg_pool2d_backward" in policy["patches"]


def test_minimal_policy_needs_a_profile(tmp_path: Path) -> None:
    refused = detrun("record", "--policy", "minimal", CNN, cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("detrun: error: --policy minimal needs --from-profile PROFILE.json "
                                      "(written by `detrun profile --json`)")
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"schema_version": 1, "ops": [
        {"op": "aten::_adaptive_avg_pool2d_backward", "nondeterministic_cuda": True, "raises_in_det_mode": True}]}))
    recorded = detrun("record", "-q", "--policy", "minimal", "--from-profile", str(profile), CNN, cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    from detrun.trace import read_trace

    (policy,) = read_trace(str(tmp_path / "trace.zst")).of("policy")
    assert policy["patches"] == ["adaptive_avg_pool2d_backward"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: on CPU the adaptive pool never raises")
def test_cnn_trains_on_gpu_under_strict_policy(tmp_path: Path) -> None:
    recorded = detrun("record", "-q", CNN, "--device", "cuda", cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    replayed = detrun("replay", "trace.zst", CNN, cwd=tmp_path)
    assert weights_sha(replayed.stdout) == weights_sha(recorded.stdout)
