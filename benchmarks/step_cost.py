"""What detrun adds to one training step, in microseconds, measured in one process by difference.

The same MLP loop (benchmarks/workloads/cpu_train.py's model) runs plain, inside an in-process
`detrun.record()` block and inside a `detrun.replay()` of it, interleaved over several rounds;
each mode's per-step time is its loop time divided by the steps, and detrun's cost is the median
difference to the plain rounds. Microseconds per step are steadier than ratios on a shared
machine: the plain step itself swings by tens of percent between rounds, the difference much less.

    python benchmarks/step_cost.py [--rounds 9] [--steps 1000] [--digest-every 0|1|N] [--cpu] [--profile]

`--profile` instead runs one recording and one replay under cProfile and prints detrun's own
functions by total time (what to cut next). Not part of the test suite.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

import detrun

# The loop's clock: wall time, or with --cpu the process's CPU time (all its threads, detrun's
# included), which time the machine's other tenants take from it does not inflate.
CLOCK = time.perf_counter


def _loop(steps: int) -> float:
    """Train for `steps` steps and return the loop's seconds (CPU seconds of the process under --cpu)."""
    torch.seed()
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
    start = CLOCK()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return CLOCK() - start


def _record(trace: str, steps: int, every: int) -> float:
    with detrun.record(trace, force=True, quiet=True, digest_every=every):
        seconds = _loop(steps)
    return seconds


def _replay(trace: str, steps: int) -> float:
    with detrun.replay(trace, quiet=True) as result:
        seconds = _loop(steps)
    assert result.verdict == "REPRODUCED", result
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--digest-every", type=int, default=0, help="0: auto (the default), 1: every step")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="time the loops in process CPU time, not wall time")
    options = parser.parse_args()
    global CLOCK
    if options.cpu:
        CLOCK = time.process_time
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        trace = os.path.join(work, "trace.zst")
        _loop(50)
        _record(trace, options.steps, options.digest_every)
        if options.profile:
            for name, run in (("record", lambda: _record(trace, options.steps, options.digest_every)),
                              ("replay", lambda: _replay(trace, options.steps))):
                profiler = cProfile.Profile()
                profiler.runcall(run)
                print(f"\n=== {name}: {options.steps} steps, detrun's functions by total time")
                pstats.Stats(profiler).sort_stats("tottime").print_stats("detrun", 25)
            return
        times: dict[str, list[float]] = {"plain": [], "record": [], "replay": []}
        for _ in range(options.rounds):
            times["plain"].append(_loop(options.steps) / options.steps)
            times["record"].append(_record(trace, options.steps, options.digest_every) / options.steps)
            times["replay"].append(_replay(trace, options.steps) / options.steps)
    plain = times["plain"]
    print(f"{options.steps} steps x {options.rounds} interleaved rounds, --digest-every "
          f"{options.digest_every or 'auto'}, torch {torch.__version__}, 1 thread, "
          f"{'process CPU time' if options.cpu else 'wall time'}")
    print(f"{'mode':<7} {'us/step':>9} {'added us/step (median of rounds)':>34} {'ratio':>7}")
    for mode, values in times.items():
        added = [v - p for v, p in zip(values, plain)]
        print(f"{mode:<7} {statistics.median(values) * 1e6:9.1f} {statistics.median(added) * 1e6:34.1f} "
              f"{statistics.median(values) / statistics.median(plain):6.3f}x")


if __name__ == "__main__":
    sys.exit(main())
