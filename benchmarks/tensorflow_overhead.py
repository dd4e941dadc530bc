"""Measure detrun's overhead on TensorFlow: plain vs record vs replay of the Keras example, interleaved.

The example prints the seconds its `model.fit` + `model.predict` took (`--timing`), so TensorFlow's
import (seconds, the same with or without detrun) stays out of the loop ratio; whole-process wall
and CPU times (all threads and processes) are shown too. Record and replay also run with op
determinism on, which plain does not: the loop ratio includes its cost. Absolute times on a
shared machine are noisy: read the ratios, measured in the same round.

    python benchmarks/tensorflow_overhead.py                       # 3 rounds
    python benchmarks/tensorflow_overhead.py --rounds 5 --epochs 8
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "keras_unseeded.py")
DETRUN = [str(Path(sys.executable).with_name("detrun"))]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], cwd: str) -> tuple[float, float, float]:
    """Run a command; return (loop seconds it printed, wall seconds, CPU seconds of all its processes)."""
    cpu = _children_cpu()
    start = time.perf_counter()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=True, env=env)
    wall = time.perf_counter() - start
    match = re.search(r"loop_seconds ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1)), wall, _children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--samples", type=int, default=1024)
    options = parser.parse_args()
    args = ["--epochs", str(options.epochs), "--samples", str(options.samples), "--timing"]
    steps = options.epochs * -(-options.samples // 32)
    with tempfile.TemporaryDirectory() as work:
        trace = os.path.join(work, "trace.zst")
        modes = {
            "plain": [sys.executable, EXAMPLE, *args],
            "record": [*DETRUN, "record", "-q", "--force", "-o", trace, EXAMPLE, *args],
            "replay": [*DETRUN, "replay", "-q", trace, EXAMPLE, *args],
        }
        timed(modes["record"], work)  # warm the file cache and give replay its first trace
        samples: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in modes}
        for _ in range(options.rounds):
            for mode, command in modes.items():  # interleaved: each round runs all three
                samples[mode].append(timed(command, work))
        size = os.path.getsize(trace)
    medians = {mode: [statistics.median(column) for column in zip(*rows)] for mode, rows in samples.items()}
    print(f"keras_unseeded.py {' '.join(args)}: {steps} steps ({options.rounds} interleaved rounds, medians)")
    print(f"{'mode':<8} {'loop s':>8} {'ratio':>7} {'wall s':>8} {'ratio':>7} {'cpu s':>8} {'ratio':>7}")
    for mode, values in medians.items():
        cells = " ".join(f"{v:8.3f} {v / p:6.3f}x" for v, p in zip(values, medians["plain"]))
        print(f"{mode:<8} {cells}")
    print(f"trace: {size} bytes = {size / steps:.1f} bytes per step")


if __name__ == "__main__":
    main()
