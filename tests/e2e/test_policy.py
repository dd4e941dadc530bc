"""The determinism policy is applied in record and replay alike, and recorded in the trace."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import pytest

from conftest import EXAMPLES, detrun, verdict, weights_sha
from detrun.trace import read_trace

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


UNINITIALISED = str(Path(__file__).parent / "scripts" / "uninitialised_memory.py")


def test_fill_uninitialized_memory_stays_off_until_the_program_allocates_uninitialised_memory(tmp_path: Path) -> None:
    # Libraries' torch.empty calls (nn.Linear's own init) do not turn it on: torch writes what it allocates.
    first, second = (detrun("record", "-f", "-o", name, UNINITIALISED, cwd=tmp_path) for name in ("a.zst", "b.zst"))
    assert first.returncode == 0, first.stderr
    assert "step 5 fill False" in first.stdout
    assert weights_sha(first.stdout) != weights_sha(second.stdout)  # unseeded: the plain bits differ
    (policy,) = read_trace(str(tmp_path / "a.zst")).of("policy")
    assert policy["flags"]["fill_uninitialized_memory"] == "when the program calls torch.empty*"
    replayed = detrun("replay", "a.zst", UNINITIALISED, cwd=tmp_path)
    assert verdict(replayed.stderr).startswith("detrun: REPRODUCED"), replayed.stderr
    assert replayed.stdout == first.stdout


def test_the_programs_own_torch_empty_turns_the_fill_on_at_the_same_point_on_replay(tmp_path: Path) -> None:
    recorded = detrun("record", "-f", UNINITIALISED, "--empty", cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    lines = recorded.stdout.splitlines()
    assert "step 2 fill False" in lines and "step 3 fill True" in lines
    assert "buffer filled with NaN: True" in lines  # the very call that asked for it is filled
    changes = read_trace(str(tmp_path / "trace.zst")).of("backends.set")
    assert [(c[0], c[1]) for c in changes if "deterministic.fill_uninitialized_memory" in c[3]] == [
        (2, "uninitialised_memory.py:19")]
    replayed = detrun("replay", "trace.zst", UNINITIALISED, cwd=tmp_path)
    assert verdict(replayed.stderr).startswith("detrun: REPRODUCED"), replayed.stderr
    assert replayed.stdout == recorded.stdout
