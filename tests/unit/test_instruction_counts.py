"""benchmarks/instructions.py: which process is the script's, read from valgrind's logs; its window is off elsewhere.

Valgrind itself is not needed: the logs below are what valgrind 3.19 writes with --log-file=DIR/MODE.%p.log,
a forked worker's first lines landing in its parent's log, as they do.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _benchmark_module(name: str, folder: Path) -> ModuleType:
    """Import a benchmark script (or a workload's helper) by name from its folder."""
    sys.path.insert(0, str(folder))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def _log(pid: int, parent: int, command: str, collected: int | None, extra: str = "") -> str:
    lines = [f"=={pid}== Callgrind, a call-graph generating cache profiler", f"=={pid}== Command: {command}",
             f"=={pid}== Parent PID: {parent}", f"=={pid}== "]
    if collected is not None:
        lines += [f"=={pid}== Events    : Ir", f"=={pid}== Collected : {collected}", f"=={pid}== I   refs:      {collected:,}"]
    return "\n".join(lines) + "\n" + extra


def test_the_main_process_is_the_launchers_child_and_its_workers_are_its_children(tmp_path: Path) -> None:
    instructions = _benchmark_module("instructions", REPO / "benchmarks")
    detrun, child = "/venv/bin/detrun record -q --force -o t.zst loop.py", "/venv/bin/python -m detrun._child"
    # The launcher (10), its child (11) that runs the script, two DataLoader workers (12, 13), and a
    # forked process that counted nothing (14). Worker 12's count lands in its parent's log first.
    (tmp_path / "record.10.log").write_text(_log(10, 9, detrun, 5_000))
    (tmp_path / "record.11.log").write_text(_log(11, 10, child, 700, extra="==12== Collected : 300\n"))
    (tmp_path / "record.12.log").write_text(_log(12, 11, child, None))
    (tmp_path / "record.13.log").write_text(_log(13, 11, child, 200))
    (tmp_path / "record.14.log").write_text(_log(14, 11, child, 0))
    (tmp_path / "plain.20.log").write_text(_log(20, 9, "/venv/bin/python loop.py", 600))
    (tmp_path / "plain.21.log").write_text(_log(21, 20, "/venv/bin/python loop.py", 250))
    record = instructions.counted_processes(str(tmp_path), "record")
    assert sorted(p.pid for p in record) == [10, 11, 12, 13, 14]
    assert instructions.split_main(record, plain=False) == (700, 500)  # the launcher's 5,000 left out
    assert instructions.split_main(instructions.counted_processes(str(tmp_path), "plain"), plain=True) == (600, 250)


def test_a_workloads_window_does_nothing_outside_the_instruction_count(monkeypatch: pytest.MonkeyPatch) -> None:
    window = _benchmark_module("instruction_window", REPO / "benchmarks" / "workloads")
    monkeypatch.delenv("DETRUN_BENCH_CALLGRIND", raising=False)
    spawned: list[object] = []
    monkeypatch.setattr(os, "posix_spawnp", lambda *args, **kwargs: spawned.append(args))
    window.open_window()
    window.close_window()
    assert spawned == []  # overhead.py's timed loops run exactly as before
    monkeypatch.setenv("DETRUN_BENCH_CALLGRIND", "1")
    monkeypatch.setattr(os, "waitpid", lambda pid, options: (pid, 0))
    window.open_window()
    assert spawned and spawned[0][1] == ["callgrind_control", "-i", "on"]  # type: ignore[index]
