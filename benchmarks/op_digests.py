"""Measure `record --op-digests K`: the cost of digesting every op's outputs, per digested step.

Runs the CPU training workload (workloads/cpu_train.py: a 3-layer MLP, Adam, 128x64 batches) as
plain python, under `detrun record`, and under `detrun record --op-digests K` with K = every step,
interleaved round by round; prints the medians of the loop time each run prints (interpreter and
torch start-up stay out) and the ratios. The op-digest ratio over plain record is the cost of a
digested step; steps beyond K cost what a plain record's do. Absolute times on a shared 2-core
machine are noisy (tens of percent between identical runs): read the ratios of the medians.

    python benchmarks/op_digests.py                      # 200 steps, 5 rounds
    python benchmarks/op_digests.py --steps 500 --rounds 7
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import DETRUN, HERE, timed  # noqa: E402 - the same timing and thread settings as overhead.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    script, steps = str(HERE / "workloads/cpu_train.py"), str(options.steps)
    with tempfile.TemporaryDirectory() as work:
        plain_trace, op_trace = os.path.join(work, "plain.zst"), os.path.join(work, "ops.zst")
        modes = {
            "plain": [sys.executable, script, steps],
            "record": [*DETRUN, "record", "-q", "--force", "-o", plain_trace, script, steps],
            "record --op-digests K": [*DETRUN, "record", "-q", "--force", "--op-digests", steps, "-o", op_trace,
                                      script, steps],
        }
        timed(modes["record"], work)  # warm the file cache
        loops: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(options.rounds):
            for mode, command in modes.items():  # interleaved: each round runs all three
                loops[mode].append(timed(command, work)[0])
        sizes = {"record": os.path.getsize(plain_trace), "record --op-digests K": os.path.getsize(op_trace)}
    medians = {mode: statistics.median(values) for mode, values in loops.items()}
    print(f"workloads/cpu_train.py {steps} steps, K = {steps} (every step digested), {options.rounds} interleaved "
          "rounds, medians of the loop time")
    print(f"{'mode':<24} {'loop s':>8} {'vs plain':>9} {'vs record':>10} {'ms/step':>8} {'trace B':>9}")
    for mode, loop in medians.items():
        size = f"{sizes[mode]:9d}" if mode in sizes else f"{'':>9}"
        print(f"{mode:<24} {loop:8.3f} {loop / medians['plain']:8.2f}x {loop / medians['record']:9.2f}x "
              f"{1000 * loop / options.steps:8.3f} {size}")
    extra = sizes["record --op-digests K"] - sizes["record"]
    print(f"op digests add {extra} bytes to the trace: {extra / options.steps:.0f} bytes per digested step")


if __name__ == "__main__":
    main()
