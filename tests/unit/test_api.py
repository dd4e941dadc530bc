"""The in-process API: `with detrun.record(...)` / `with detrun.replay(...)` around unseeded torch training."""
from __future__ import annotations

import hashlib
import multiprocessing.process
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.utils.data._utils.worker as worker_module
import torch.utils.data.dataloader as dataloader_module
from torch import nn

import detrun
from detrun.engine.session import active_session
from detrun.errors import OutputExists, TargetRefused
from detrun.trace import TraceWriter, read_trace


def train(steps: int = 12, nudge_at: int | None = None, raise_at_end: bool = False) -> str:
    """Train a tiny unseeded model on random batches; return the sha256 of its weights."""
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1))  # torch.randn-style init, unseeded
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    noise = np.random.rand()  # numpy's global generator, unseeded
    for step in range(1, steps + 1):
        x = torch.randn(8, 6)
        y = x.sum(dim=1, keepdim=True) + random.random() + noise
        loss = ((model(x) - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        if step == nudge_at:
            with torch.no_grad():
                model[0].weight[0, 0] += 1e-4
        optimizer.step()
    if raise_at_end:
        raise ValueError("the training failed at the end")
    return hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()


def test_record_then_replay_in_process_is_identical_while_plain_calls_differ(tmp_path: Path) -> None:
    assert train() != train()  # the check can fail: unseeded, two plain calls differ
    trace = tmp_path / "trace.zst"
    with detrun.record(trace, quiet=True):
        recorded = train()
    train()  # moves every global generator on: the replay must not depend on it
    with detrun.replay(trace, quiet=True) as result:
        replayed = train()
    assert replayed == recorded
    assert result.verdict == "REPRODUCED" and result.reproduced, result.line
    assert result.checks["steps"] == 12 and result.reason == "" and result.step is None
    result.raise_for_verdict()  # REPRODUCED raises nothing


def test_a_block_keeps_the_callers_seeds_and_its_replay_restores_them(tmp_path: Path) -> None:
    def seeded(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    seeded(7)
    without_detrun = train()
    seeded(8)
    assert train() != without_detrun  # the check can fail: the seeds decide the weights
    trace = tmp_path / "trace.zst"
    seeded(7)
    with detrun.record(trace, quiet=True):
        recorded = train()
    assert recorded == without_detrun  # detrun does not reseed what the caller seeded
    seeded(8)  # the replay must restore the generators' states at the recorded block's start
    with detrun.replay(trace, quiet=True) as result:
        replayed = train()
    assert replayed == recorded and result.verdict == "REPRODUCED", result.line


def test_a_block_undoes_the_uninitialised_memory_watch(tmp_path: Path) -> None:
    originals = torch.empty, torch.empty_like, torch.Tensor.__dict__.get("resize_")
    fill = torch.utils.deterministic.fill_uninitialized_memory
    with detrun.record(tmp_path / "trace.zst", quiet=True):
        assert torch.empty is not originals[0]  # watched while the block runs
        train()
    assert (torch.empty, torch.empty_like, torch.Tensor.__dict__.get("resize_")) == originals
    assert torch.utils.deterministic.fill_uninitialized_memory is fill


def test_a_nudged_weight_is_diverged_at_its_step(tmp_path: Path) -> None:
    trace = tmp_path / "trace.zst"
    with detrun.record(trace, quiet=True, digest_every=1):  # the default, auto, may name step 10 by its loss
        train()
    with detrun.replay(trace, quiet=True) as result:
        train(nudge_at=5)
    assert result.verdict == "DIVERGED" and result.step == 5, result.line
    assert "parameter '0.weight' differs" in result.reason and "result.divergences lists them" in result.reason
    assert len(result.divergences) > 1
    with pytest.raises(detrun.DivergedError, match="DIVERGED at step 5"):
        result.raise_for_verdict()
    with pytest.raises(detrun.DivergedError) as raised:
        with detrun.replay(trace, quiet=True, check=True):
            train(nudge_at=9)
    assert raised.value.result.step == 9 and isinstance(raised.value, AssertionError)


def test_check_runs_a_function_twice_and_returns_the_verdict() -> None:
    assert detrun.check(train, 6).verdict == "REPRODUCED"
    nothing = detrun.check(sorted, [3, 1, 2])  # runs, but trains nothing: no state to vouch for
    assert nothing.verdict == "UNVERIFIED" and "nothing of the training state could be checked" in nothing.reason
    with pytest.raises(detrun.UnverifiedError):
        nothing.raise_for_verdict()
    clocked = detrun.check(_train_with_the_clock)
    assert clocked.verdict == "DIVERGED" and "the loss of backward() call #1 differs" in clocked.reason, clocked.line


def _train_with_the_clock() -> None:
    """Train with a weight taken from the clock, which detrun does not record."""
    model = nn.Linear(3, 1)
    with torch.no_grad():
        model.weight[0, 0] = float(__import__("time").perf_counter_ns() % 1000003)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()


def _patchable_state() -> dict[tuple[str, str], Any]:
    """Return every attribute a source may patch, by owner and name, plus process-wide settings."""
    owners: list[Any] = [os, random, random.Random, np.random, np.random.mtrand, torch, torch.random, torch.cuda,
                         torch.autograd, torch._C, torch.nn.Module, torch.optim.Optimizer, worker_module,
                         dataloader_module._BaseDataLoaderIter, dataloader_module.DataLoader,
                         multiprocessing.process.BaseProcess, signal]
    state: dict[tuple[str, str], Any] = {(repr(owner), name): value for owner in owners
                                         for name, value in list(vars(owner).items())}
    from torch.optim.optimizer import _global_optimizer_post_hooks

    state[("process", "settings")] = (
        tuple(sys.meta_path), len(_global_optimizer_post_hooks), signal.getsignal(signal.SIGINT),
        torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark, torch.get_num_threads(),
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"), os.fstat(1).st_ino, active_session())
    return state


def _changes(before: dict[tuple[str, str], Any], after: dict[tuple[str, str], Any]) -> list[tuple[str, str]]:
    changed = [key for key, value in before.items() if after.get(key, before) is not value and after.get(key) != value]
    added = [key for key, value in after.items()
             if key not in before and str(getattr(value, "__module__", "") or "").startswith("detrun")]
    return changed + added


def test_every_hook_is_undone_after_record_replay_and_an_exception(tmp_path: Path) -> None:
    trace = tmp_path / "trace.zst"
    before = _patchable_state()
    with pytest.raises(ValueError, match="failed at the end"):
        with detrun.record(trace, quiet=True):
            assert random.seed is not before[(repr(random), "seed")]  # the hooks were in place
            assert torch.manual_seed is not before[(repr(torch), "manual_seed")]
            train(raise_at_end=True)
    assert _changes(before, _patchable_state()) == []
    with pytest.raises(ValueError):
        with detrun.replay(trace, quiet=True) as raised_too:
            train(raise_at_end=True)
    assert _changes(before, _patchable_state()) == []
    assert raised_too.verdict == "REPRODUCED", raised_too.line  # both ended by the same exception
    with detrun.replay(trace, quiet=True) as ended_normally:
        train()
    assert ended_normally.verdict == "DIVERGED" and "exit status recorded 1, got 0" in ended_normally.reason
    assert _changes(before, _patchable_state()) == []


def test_a_replay_pins_the_recorded_torch_settings_and_puts_the_callers_back(tmp_path: Path) -> None:
    trace = tmp_path / "trace.zst"
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    other_threads = 1 if threads > 1 else 2
    try:
        with detrun.record(trace, quiet=True):
            train(3)
        torch.set_num_threads(other_threads)
        torch.set_float32_matmul_precision("medium" if precision != "medium" else "high")
        changed = torch.get_float32_matmul_precision()
        with detrun.replay(trace, quiet=True) as result:
            pinned = (torch.get_num_threads(), torch.get_float32_matmul_precision())
            train(3)
        assert pinned == (threads, precision)  # the recording's, during the replay
        assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == (other_threads, changed)
        assert result.verdict == "REPRODUCED", result.line
    finally:
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(precision)


def test_blocks_do_not_nest_and_are_entered_once(tmp_path: Path) -> None:
    block = detrun.record(tmp_path / "trace.zst", quiet=True)
    with block:
        with pytest.raises(detrun.SessionActiveError, match="cannot start inside another detrun block"):
            with detrun.record(tmp_path / "inner.zst"):
                pass
        with pytest.raises(detrun.SessionActiveError):
            with detrun.replay(tmp_path / "trace.zst"):
                pass
        train(3)
    assert not (tmp_path / "inner.zst").exists()
    with pytest.raises(RuntimeError, match="already used"):
        with block:
            pass
    with detrun.replay(tmp_path / "trace.zst", quiet=True) as result:
        train(3)
    assert result.verdict == "REPRODUCED", result.line
    with pytest.raises(RuntimeError, match="after the `with` block"):
        with detrun.replay(tmp_path / "trace.zst", quiet=True) as running:
            running.verdict  # noqa: B018
    assert active_session() is None


def test_an_existing_trace_is_not_overwritten_and_a_script_trace_is_refused(tmp_path: Path) -> None:
    trace = tmp_path / "trace.zst"
    trace.write_bytes(b"mine")
    with pytest.raises(OutputExists, match="exists; pass --force"):
        with detrun.record(trace):
            pass
    assert trace.read_bytes() == b"mine" and active_session() is None
    script_trace = tmp_path / "script.zst"
    writer = TraceWriter(str(script_trace), {"script": {"name": "train.py"}, "settings": {"hashseed": "1"}})
    writer.close({"complete": True, "exit_status": 0, "steps": 0})
    with pytest.raises(TargetRefused, match="replay it with `detrun replay`"):
        with detrun.replay(script_trace):
            pass
    assert active_session() is None


def test_another_hash_seed_is_named_as_a_cause_and_an_interrupt_leaves_an_incomplete_trace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = tmp_path / "trace.zst"
    try:
        with detrun.record(trace, quiet=True):
            train(4)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert not read_trace(str(trace)).complete
    monkeypatch.setattr(detrun.api, "hash_probe", lambda: 12345)  # as if started with another PYTHONHASHSEED
    with detrun.replay(trace, quiet=True) as result:
        train(10)  # stopped after the 4 recorded steps
    assert result.verdict == "REPRODUCED" and "up to step 4 of an incomplete recording" in result.line
    assert any("PYTHONHASHSEED" in cause for cause in result.causes)


def test_a_replay_interrupted_before_the_recordings_end_is_unverified(tmp_path: Path) -> None:
    trace = tmp_path / "trace.zst"
    with detrun.record(trace, quiet=True):
        train(6)
    try:
        with detrun.replay(trace, quiet=True) as result:
            train(2)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert result.verdict == "UNVERIFIED" and "interrupted (KeyboardInterrupt)" in result.reason, result.line


def test_cuda_generators_are_compared_only_when_both_ends_had_cuda() -> None:
    from detrun.engine.sources.final_state import _first_difference, _shared_cuda_rng

    model, cuda = ["module#0:Linear", 1, "module #0 (Linear)"], ["rng:cuda", 7, "torch's CUDA random states"]
    assert _first_difference(*_shared_cuda_rng([model], [model, cuda])) is None  # CUDA started in another cell
    assert _first_difference(*_shared_cuda_rng([model, cuda], [model])) is None
    assert "CUDA random states differs" in str(_first_difference(*_shared_cuda_rng([model, cuda],
                                                                                   [model, ["rng:cuda", 8, "x"]])))


def test_import_detrun_stays_cheap() -> None:
    import subprocess

    code = "import sys, detrun; print(sorted(m for m in ('torch', 'numpy', 'detrun.api') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert out.stdout.strip() == "[]"
