"""The loop's window for benchmarks/instructions.py: callgrind counts only what runs between `open` and `close`.

Under instructions.py (DETRUN_BENCH_CALLGRIND set) every process of a run starts with callgrind's
instrumentation off. A workload switches it on in all of them as its loop starts, so the
DataLoader workers it forks then are counted too, and off as the loop ends: interpreter start-up,
imports and teardown stay out of the count. Without that variable both do nothing.
"""
from __future__ import annotations

import os


def _switch(state: str) -> None:
    """Switch callgrind's instrumentation `on` or `off` in every process it runs, and wait until it has."""
    if not os.environ.get("DETRUN_BENCH_CALLGRIND"):
        return
    # posix_spawnp, not subprocess: detrun's hooks on subprocess would run, and be counted, in the
    # window. Its output goes nowhere: it names PIDs, and a replay compares what the script prints.
    quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]
    pid = os.posix_spawnp("callgrind_control", ["callgrind_control", "-i", state], os.environ, file_actions=quiet)
    os.waitpid(pid, 0)


def open_window() -> None:
    """Start counting: the loop begins."""
    _switch("on")


def close_window() -> None:
    """Stop counting: the loop has ended."""
    _switch("off")
