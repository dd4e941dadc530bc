"""Measure detrun's overhead on a 2-rank DDP run: plain torchrun vs record vs replay, interleaved, medians.

Each round runs the three modes back to back with the same launcher line (`python -m
torch.distributed.run --nproc_per_node=2`, gloo, one thread per rank) on a fresh port; rank 0
prints its loop time, so the launcher's and torch's start-up stay out of the loop ratio. Wall
times (whole command, launcher included) are shown too, and the per-rank trace sizes.

    python benchmarks/distributed_overhead.py --rounds 5 --steps 500
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DETRUN = [str(Path(sys.executable).with_name("detrun"))]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(command: list[str], cwd: str) -> tuple[float, float, str]:
    """Run a command; return (rank 0's loop seconds, wall seconds, stderr)."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - start
    match = re.search(r"loop_seconds ([0-9.]+)", result.stdout)
    assert result.returncode == 0 and match, result.stdout + result.stderr[-3000:]
    return float(match.group(1)), wall, result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=500)
    options = parser.parse_args()
    script = str(HERE / "workloads" / "ddp_train.py")
    times: dict[str, list[tuple[float, float]]] = {"plain": [], "record": [], "replay": []}
    sizes = ""
    with tempfile.TemporaryDirectory() as work:
        for round_number in range(options.rounds):
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                       "--master_addr=127.0.0.1", f"--master_port={free_port()}", script, str(options.steps)]
            times["plain"].append(timed(command, work)[:2])
            loop, wall, stderr = timed([*DETRUN, "record", "-f", "-o", "t.zst", "--", *command], work)
            times["record"].append((loop, wall))
            sizes = "; ".join(line.removeprefix("detrun:").strip() for line in stderr.splitlines()
                              if re.match(r"detrun: +rank \d+:", line))
            times["replay"].append(timed([*DETRUN, "replay", "t.zst", "--", *command], work)[:2])
            print(f"round {round_number + 1}: " + ", ".join(f"{m} {v[-1][0]:.3f}s" for m, v in times.items()),
                  file=sys.stderr)
    plain_loop = statistics.median(t[0] for t in times["plain"])
    plain_wall = statistics.median(t[1] for t in times["plain"])
    print(f"2-rank DDP (gloo), {options.steps} steps, {options.rounds} interleaved rounds; rank 0's loop, medians")
    print("| mode | loop s | ratio | wall s | wall ratio |")
    print("|---|---|---|---|---|")
    for mode, values in times.items():
        loop = statistics.median(t[0] for t in values)
        wall = statistics.median(t[1] for t in values)
        print(f"| {mode} | {loop:.3f} | {loop / plain_loop:.3f}x | {wall:.2f} | {wall / plain_wall:.3f}x |")
    print(f"per-rank trace: {sizes}")


if __name__ == "__main__":
    main()
