"""Count the instructions detrun adds, with callgrind: plain vs record vs replay, a measure no other tenant disturbs.

overhead.py's times are what a user waits for, but on a shared machine two plain runs differ by
more than the 1-2% it looks for. An instruction count does not move with the machine's load: each
workload runs once per mode under `valgrind --tool=callgrind`, and only its loop is counted (the
workloads open and close the window, workloads/instruction_window.py), in every process of the run:
the script's main process and its DataLoader workers, not detrun's launcher. Start-up is counted
whole instead: every process from exec to exit, `detrun record hello.py` against `python hello.py`.

Read the ratios, not the absolute counts, and as CPU work, not time: an instruction that misses
the cache costs more than one that hits, and a process that waits costs none; nor is the kernel's
time counted. Under callgrind a run is some 50 times slower, and detrun's choices that follow the
clock are made on callgrind's: the writer flushes each second (CHUNK_SECONDS), and the digest
cadence (`--digest-every auto`) times a digest against a step whose Python and numpy slow down
unequally. Record's and replay's counts are upper bounds. `git`, which the fingerprint runs, is
not counted. callgrind_control switches every callgrind process of the machine: run one at a time.
A loop's count includes what it does once: the first and last steps' full parameter digests (a
short loop's "per step" is more than a long one's), and the DataLoader workers' start and exit
(plain workers import `numpy.random` themselves, detrun's inherit it from its main process, so
their column can come out below plain's). The main process's column is the per-batch hooks'.

    python benchmarks/instructions.py                  # every workload (about 8 minutes)
    python benchmarks/instructions.py --only dataloader
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from overhead import DETRUN, mode_commands

HERE = Path(__file__).resolve().parent
# Shorter than overhead.py's: a counted loop runs some 50 times slower. (script, args, unit, units, plural)
WORKLOADS = {
    "train": ("workloads/cpu_train.py", ["50"], "step", 50, "steps"),
    "dataloader": ("workloads/dataloader_bound.py", ["20000"], "batch", 79, "batches"),  # 20000 / 256, rounded up
}
MODES = ("plain", "record", "replay", "rec-off")


def valgrind_command(out_dir: str, mode: str, counted_from_start: bool) -> list[str]:
    """Return the valgrind prefix that counts every process of a run into `out_dir` (one file per PID)."""
    return ["valgrind", "--tool=callgrind", f"--instr-atstart={'yes' if counted_from_start else 'no'}",
            "--trace-children=yes", "--trace-children-skip=*/git,*callgrind_control*",
            f"--callgrind-out-file={out_dir}/{mode}.%p.out", f"--log-file={out_dir}/{mode}.%p.log"]


class CountedProcess:
    """One process of a counted run: its PID, its parent's, its command line, its instructions."""

    def __init__(self, pid: int, parent: int, command: str, instructions: int) -> None:
        self.pid, self.parent, self.command, self.instructions = pid, parent, command, instructions


def counted_processes(out_dir: str, mode: str) -> list[CountedProcess]:
    """Read each process's parent, command and count from valgrind's logs (`==PID== Collected : N`).

    A forked process's lines may land in its parent's log before valgrind moves to a log of its
    own, so every log is read for every PID.
    """
    fields: dict[int, dict[str, str]] = {}
    for log in Path(out_dir).glob(f"{mode}.*.log"):
        for pid, key, value in re.findall(r"^==(\d+)== (Parent PID|Command|Collected) ?: (.*)$",
                                          log.read_text(errors="replace"), re.M):
            fields.setdefault(int(pid), {})[key] = value.strip()
    return [CountedProcess(pid, int(f.get("Parent PID", 0)), f.get("Command", ""), int(f.get("Collected", 0)))
            for pid, f in fields.items()]


def split_main(processes: list[CountedProcess], plain: bool) -> tuple[int, int]:
    """Return (the script's main process's count, the rest's: its DataLoader workers), without detrun's launcher."""
    pids = {p.pid for p in processes}
    roots = [p for p in processes if p.parent not in pids]
    if plain:
        main = roots[0]
    else:  # the launcher's child, which runs the script (`python -m detrun._child`)
        main = next(p for p in processes if p.parent == roots[0].pid and "detrun._child" in p.command)
    workers = sum(p.instructions for p in processes if p.parent == main.pid)
    return main.instructions, workers


def run_counted(command: list[str], cwd: str, env: dict[str, str]) -> None:
    """Run a command under valgrind; a replay's UNVERIFIED (5: a DataLoader epoch trains nothing) is a success."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode not in (0, 5):
        raise SystemExit(f"instructions.py: {' '.join(command[-4:])} exited {result.returncode}:\n{result.stderr[-2000:]}")


def measure(name: str, env: dict[str, str]) -> None:
    """Count one workload's loop in each mode and print instructions per unit and ratios to plain."""
    script, args, unit, units, plural = WORKLOADS[name]
    path = str(HERE / script)
    with tempfile.TemporaryDirectory() as work:
        commands = mode_commands(path, args, work)
        run_counted(commands["record"], work, env)  # the replay's trace, and warm bytecode caches
        rows = {}
        for mode in MODES:
            run_counted([*valgrind_command(work, mode, False), *commands[mode]], work,
                        {**env, "DETRUN_BENCH_CALLGRIND": "1"})
            rows[mode] = split_main(counted_processes(work, mode), mode == "plain")
    print(f"\n{name}: {script} {' '.join(args)}, its loop counted by callgrind (instructions per {unit}, {units} {plural})")
    plain_main, plain_workers = rows["plain"]
    print(f"{'mode':<8} {'all':>11} {'ratio':>7} {'main':>11} {'ratio':>7} {'added':>9} {'workers':>11} {'added':>9}")
    for mode, (main, workers) in rows.items():
        total = main + workers
        print(f"{mode:<8} {total / units:11,.0f} {total / (plain_main + plain_workers):6.3f}x {main / units:11,.0f} "
              f"{main / plain_main:6.3f}x {(main - plain_main) / units:+9,.0f} {workers / units:11,.0f} "
              f"{(workers - plain_workers) / units:+9,.0f}")


def measure_startup(env: dict[str, str]) -> None:
    """Count every instruction of `python hello.py` and of detrun's record and replay of it, from exec to exit."""
    with tempfile.TemporaryDirectory() as work:
        Path(work, "hello.py").write_text('print("hello")\n')
        commands = {
            "python": [sys.executable, "hello.py"],
            "record": [*DETRUN, "record", "-q", "--force", "hello.py"],
            "replay": [*DETRUN, "replay", "-q", "trace.zst", "hello.py"],
        }
        run_counted(commands["record"], work, env)  # the replay's trace, and warm bytecode caches
        totals = {}
        for mode, command in commands.items():
            run_counted([*valgrind_command(work, mode, True), *command], work, env)
            totals[mode] = sum(p.instructions for p in counted_processes(work, mode))
    print("\nstartup: hello.py as a whole process tree, every instruction from exec to exit (git not counted)")
    print(f"{'mode':<8} {'millions':>9} {'ratio':>7} {'added':>9}")
    for mode, total in totals.items():
        print(f"{mode:<8} {total / 1e6:9.1f} {total / totals['python']:6.2f}x {(total - totals['python']) / 1e6:+9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted([*WORKLOADS, "startup"]))
    options = parser.parse_args()
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        print(f"instructions.py: error: {missing[0]} is not on PATH (install valgrind)", file=sys.stderr)
        sys.exit(2)
    # One intra-op thread and a bytecode cache, as overhead.py runs them.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPYCACHEPREFIX": os.path.join(tempfile.gettempdir(), "detrun-bench-pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for name in [options.only] if options.only else [*WORKLOADS, "startup"]:
        if name == "startup":
            measure_startup(env)
        else:
            measure(name, env)


if __name__ == "__main__":
    main()
