"""detrun's per-step hooks in isolation: microseconds per call, without the training compute around them.

On a shared machine a step's own time swings by tens of percent, which hides a hook of a few
microseconds; calling the hooks alone, thousands of times, does not. Measured in one process
with the benchmark MLP (benchmarks/workloads/cpu_train.py's, 12 tensors, 336 kB):

- the optimizer post-hook (detrun's step clock and every subscriber), record and replay, at a step
  whose parameters are not digested and at one that is;
- the first step of a new optimizer (naming its parameters included);
- the backward() wrapper, on a one-element graph, against torch's own.

    python benchmarks/hook_cost.py [--calls 5000] [--rounds 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Callable

import torch
from torch import nn

import detrun
from detrun.engine.session import active_session


def _model() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def _per_call(call: Callable[[], object], calls: int, rounds: int) -> float:
    """Return the median over rounds of the microseconds per call."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def post_hook(trace: str, every: int, calls: int, rounds: int) -> tuple[float, float]:
    """Return (record, replay) microseconds per optimizer post-hook call."""
    results = []
    for mode in ("record", "replay"):
        model, optimizer = _model()
        block = (detrun.record(trace, force=True, quiet=True, digest_every=every) if mode == "record"
                 else detrun.replay(trace, quiet=True))
        with block:
            model(torch.randn(4, 64)).sum().backward()
            optimizer.step()  # the first step: names, the first digest
            session = active_session()
            assert session is not None
            hook = session.clock._torch_post_hook
            results.append(_per_call(lambda: hook(optimizer, (), {}), calls, rounds))
    return results[0], results[1]


def first_step(trace: str, rounds: int) -> float:
    """Return the microseconds of a new optimizer's first post-hook call (its parameters named)."""
    times = []
    with detrun.record(trace, force=True, quiet=True):
        session = active_session()
        assert session is not None
        for _ in range(rounds):
            _model_, optimizer = _model()
            start = time.perf_counter()
            session.clock._torch_post_hook(optimizer, (), {})
            times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def backward_wrapper(trace: str, calls: int, rounds: int) -> tuple[float, float]:
    """Return (plain, under a recording) microseconds per backward() of a one-element graph."""
    weight = torch.ones(1, requires_grad=True)

    def backward() -> None:
        (weight * 2).sum().backward()

    plain = _per_call(backward, calls, rounds)
    with detrun.record(trace, force=True, quiet=True):
        _model_, optimizer = _model()
        optimizer.step()  # past the first step: backward() losses are recorded only before it
        wrapped = _per_call(backward, calls, rounds)
    return plain, wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        trace = os.path.join(work, "trace.zst")
        undigested = post_hook(trace, 1 << 30, options.calls, options.rounds)
        digested = post_hook(trace, 1, options.calls, options.rounds)
        first = first_step(trace, options.rounds)
        plain, wrapped = backward_wrapper(trace, options.calls, options.rounds)
    print(f"torch {torch.__version__}, 1 thread, medians of {options.rounds} rounds of {options.calls} calls")
    print(f"optimizer post-hook, step not digested: record {undigested[0]:6.1f} us, replay {undigested[1]:6.1f} us")
    print(f"optimizer post-hook, step digested:     record {digested[0]:6.1f} us, replay {digested[1]:6.1f} us")
    print(f"first step of a new optimizer (names):  {first:8.1f} us")
    print(f"backward() of a 1-element graph:        plain {plain:6.1f} us, recording {wrapped:6.1f} us")


if __name__ == "__main__":
    main()
