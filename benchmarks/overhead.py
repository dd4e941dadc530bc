"""Measure detrun's overhead: plain vs record vs replay, interleaved, medians and ratios side by side.

Modes: `record`/`replay` with the defaults (parameters digested within 0.25% of the step time,
`--digest-every auto`); `rec-every1`/`rep-every1` with `--digest-every 1` (every step digested);
`rec-off`, the hooks alone (`--policy off`: no deterministic algorithms, no patches), which shows
what the policy costs; `plain-again`, a second plain run in each round, the control: its ratio to
`plain` is what the machine's noise alone makes of two identical runs, so a mode's ratio means
something only where it falls outside the control's interval.

Every mode runs with a bytecode cache, as an install has. Each workload prints its own loop time
(`loop_seconds`), so interpreter and torch start-up, which detrun does not change per step, stay
out of the ratio; whole-process wall times are shown too. Each also prints its loop's CPU time
(`loop_cpu_seconds`: the DataLoader's workers included), which another tenant of a shared machine
disturbs less than the wall time: a machine that is not quiet shows in the gap between the two.
Absolute times on a shared 2-core machine are noisy (the same run swings by 20-40% here): read
the ratios of the medians and of the best runs, measured in the same interleaved rounds, and the
median of the rounds' own ratios with its 90% bootstrap interval, of the loop's time and of its
CPU time (too wide an interval means the machine was too noisy to tell; so does a control far
from 1.00x). The DataLoader workloads have no
training steps, so they skip the `--digest-every 1` modes. `--modes` runs fewer modes in the same
time, for more rounds.

    python benchmarks/overhead.py                   # every workload, 5 rounds
    python benchmarks/overhead.py --only images     # CIFAR-sized batches: where their digest costs CPU
    python benchmarks/overhead.py --rounds 7 --only train
    python benchmarks/overhead.py --rounds 25 --only train --modes record,replay,plain-again
    python benchmarks/overhead.py --only train --baseline /tmp/old   # also `base-record`/`base-replay`: the
                                                    # detrun of another checkout (`git worktree add /tmp/old
                                                    # COMMIT`), in the same interleaved rounds: before and after
    python benchmarks/overhead.py --only startup    # `detrun record/replay hello.py` against `python hello.py`,
                                                    # then a script that imports torch (with a bytecode
                                                    # cache, as an install has)
"""
from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DETRUN = [str(Path(sys.executable).with_name("detrun"))]
WORKLOADS = {
    "train": ("workloads/cpu_train.py", ["2000"], "steps", 2000),
    "dataloader": ("workloads/dataloader_bound.py", ["100000"], "sample indices", 100_000),
    "images": ("workloads/dataloader_images.py", ["12800"], "sample indices", 12_800),
}
DATA_ONLY = ("dataloader", "images")  # no training steps


# One intra-op thread in every mode: on a shared 2-core machine two threads make each run's time
# swing by tens of percent, which drowns a few percent of overhead.
BENCH_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def timed(command: list[str], cwd: str, env: dict[str, str] | None = None) -> tuple[float, float, float, str]:
    """Run a command (in BENCH_ENV unless `env` is given); return the loop's seconds and CPU seconds it
    printed, the wall seconds, and its output."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env or BENCH_ENV)
    wall = time.perf_counter() - start
    # A replay of the DataLoader-only epoch is UNVERIFIED (5): it trains nothing, so no state is checked.
    if result.returncode not in (0, 5):
        raise subprocess.CalledProcessError(result.returncode, command, result.stdout, result.stderr)
    match = re.search(r"loop_seconds ([0-9.]+)", result.stdout)
    cpu = re.search(r"loop_cpu_seconds ([0-9.]+)", result.stdout)
    assert match and cpu, result.stdout + result.stderr
    return float(match.group(1)), float(cpu.group(1)), wall, result.stdout


MODES = ("plain", "record", "replay", "rec-every1", "rep-every1", "rec-off", "plain-again")
BASELINE_MODES = ("base-record", "base-replay")  # with --baseline: another checkout's detrun


def measure(name: str, rounds: int, wanted: tuple[str, ...] = MODES, baseline: str | None = None) -> None:
    script, args, unit, units = WORKLOADS[name]
    path = str(HERE / script)
    with tempfile.TemporaryDirectory() as work:
        trace, every1 = os.path.join(work, "trace.zst"), os.path.join(work, "every1.zst")
        modes = mode_commands(path, args, work, with_baseline=bool(baseline))
        # Every mode with a bytecode cache, as a user's install has: without it, each detrun process
        # (and each DataLoader worker that imports a detrun module) recompiles it inside the loop.
        if name in DATA_ONLY:  # no training steps: the digest cadence changes nothing, and the rounds are shorter
            del modes["rec-every1"], modes["rep-every1"]
        env = startup_env(os.path.join(work, "pycache"))
        envs: dict[str, dict[str, str]] = {}
        if baseline:  # the other checkout first on the path, with a bytecode cache of its own
            envs = dict.fromkeys(BASELINE_MODES, {**startup_env(os.path.join(work, "base-pycache")),
                                                  "PYTHONPATH": baseline})
        # Warm the file and bytecode caches, and write the replays' traces: `record` always (its trace's
        # size is printed), the others when they or their replay run.
        warm = {"record": True, "rec-every1": bool({"rec-every1", "rep-every1"} & set(wanted)),
                "rec-off": "rec-off" in wanted, "base-record": True}
        for mode, needed in warm.items():
            if needed and mode in modes:
                timed(modes[mode], work, envs.get(mode, env))
        modes = {mode: command for mode, command in modes.items() if mode in wanted or mode == "plain"}
        loops: dict[str, list[float]] = {mode: [] for mode in modes}
        cpus: dict[str, list[float]] = {mode: [] for mode in modes}
        walls: dict[str, list[float]] = {mode: [] for mode in modes}
        per_batch: dict[str, list[float]] = {mode: [] for mode in modes}  # main-process CPU µs per batch
        order, shuffle = list(modes), random.Random(0).shuffle
        for _ in range(rounds):
            # Interleaved: each round runs every mode, in an order of its own (a fixed seed), so that
            # no mode always runs first, or always after the same one: a run seems to slow the next.
            shuffle(order)
            for mode in order:
                loop, cpu, wall, output = timed(modes[mode], work, envs.get(mode, env))
                loops[mode].append(loop)
                cpus[mode].append(cpu)
                walls[mode].append(wall)
                main_cpu = re.search(r"loop_main_cpu_seconds ([0-9.]+)", output)
                batches = re.search(r"loop_batches ([0-9]+)", output)
                if main_cpu and batches:
                    per_batch[mode].append(float(main_cpu.group(1)) / int(batches.group(1)) * 1e6)
        size = os.path.getsize(trace)
        every1_size = os.path.getsize(every1) if os.path.exists(every1) else None
    plain_loop, plain_wall = statistics.median(loops["plain"]), statistics.median(walls["plain"])
    print(f"\n{name}: {script} {' '.join(args)}  ({rounds} interleaved rounds, medians)")
    best_plain = min(loops["plain"])
    plain_cpu = statistics.median(cpus["plain"])
    print(f"{'mode':<11} {'loop s':>9} {'ratio':>7} {'best s':>9} {'ratio':>7} {'cpu s':>9} {'ratio':>7} "
          f"{'wall s':>9} {'ratio':>7}   {'paired loop ratio (90% CI)':<26} {'paired cpu ratio (90% CI)':<26}")
    for mode in modes:
        loop, wall, best = statistics.median(loops[mode]), statistics.median(walls[mode]), min(loops[mode])
        cpu = statistics.median(cpus[mode])
        paired, low, high = paired_ratio(loops[mode], loops["plain"])
        # The same for the loop's CPU time (every process of it), which another tenant disturbs less.
        cpu_paired, cpu_low, cpu_high = paired_ratio(cpus[mode], cpus["plain"])
        print(f"{mode:<11} {loop:9.3f} {loop / plain_loop:6.3f}x {best:9.3f} {best / best_plain:6.3f}x "
              f"{cpu:9.3f} {cpu / plain_cpu:6.3f}x {wall:9.3f} {wall / plain_wall:6.3f}x   "
              f"{paired:.3f}x ({low:.3f}-{high:.3f})      {cpu_paired:.3f}x ({cpu_low:.3f}-{cpu_high:.3f})")
    if per_batch["plain"]:
        base = statistics.median(per_batch["plain"])
        added = ", ".join(f"{mode} {statistics.median(per_batch[mode]) - base:+.1f}" for mode in modes if mode != "plain")
        print(f"main-process CPU per batch (medians): plain {base:.1f} µs; added: {added} µs")
    every1_note = f"; with --digest-every 1 {every1_size} bytes" if every1_size is not None else ""
    each = {"steps": "step", "sample indices": "sample index"}[unit]
    print(f"trace: {size} bytes = {size / units:.2f} bytes per {each} ({units} {unit}){every1_note}")


def mode_commands(path: str, args: list[str], work: str, with_baseline: bool = False) -> dict[str, list[str]]:
    """Return each mode's command for a workload script, with its traces in `work` (instructions.py's too).

    With `with_baseline`, base-record and base-replay too: the same commands on a trace of their
    own, which measure() runs with the other checkout first on PYTHONPATH.
    """
    trace, every1 = os.path.join(work, "trace.zst"), os.path.join(work, "every1.zst")
    base_trace = os.path.join(work, "base.zst")
    baseline_modes = {
        "base-record": [*DETRUN, "record", "-q", "--force", "-o", base_trace, path, *args],
        "base-replay": [*DETRUN, "replay", "-q", base_trace, path, *args],
    } if with_baseline else {}
    return {
        "plain": [sys.executable, path, *args],
        "record": [*DETRUN, "record", "-q", "--force", "-o", trace, path, *args],
        "replay": [*DETRUN, "replay", "-q", trace, path, *args],
        # --digest-every 1: every step's parameters digested (the exact step and parameter).
        "rec-every1": [*DETRUN, "record", "-q", "--force", "--digest-every", "1", "-o", every1, path, *args],
        "rep-every1": [*DETRUN, "replay", "-q", every1, path, *args],
        # The hooks alone: no determinism policy (deterministic algorithms, patches) at all.
        "rec-off": [*DETRUN, "record", "-q", "--force", "--policy", "off", "-o", os.path.join(work, "off.zst"),
                    path, *args],
        # The control: the same command as plain, so its ratio is the machine's noise alone.
        "plain-again": [sys.executable, path, *args],
        **baseline_modes,
    }


def paired_ratio(values: list[float], plain: list[float]) -> tuple[float, float, float]:
    """Return the median of each round's ratio to that round's plain run, and a 90% bootstrap interval.

    A round's runs follow each other within seconds, so a ratio within a round cancels the slow
    swings of a shared machine; the interval says whether a target like 1.02x is shown or the
    machine was too noisy to tell (a fixed seed: the same times give the same interval).
    """
    ratios = [value / base for value, base in zip(values, plain)]
    draw = random.Random(0)
    medians = sorted(statistics.median(draw.choices(ratios, k=len(ratios))) for _ in range(2000))
    return statistics.median(ratios), medians[100], medians[1899]


def startup_env(cache: str) -> dict[str, str]:
    """Return BENCH_ENV with a bytecode cache in `cache`, as a user's install has (.pyc files beside the code).

    Without one (PYTHONDONTWRITEBYTECODE=1, as on the benchmark machine) every run recompiles detrun,
    which a user never pays; PYTHONPYCACHEPREFIX keeps the compiled files out of the source tree.
    """
    env = {**BENCH_ENV, "PYTHONPYCACHEPREFIX": cache}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


# What start-up is measured on: a script that only prints, and one that imports torch first, as a
# training script does (detrun's hooks on torch's import run then).
STARTUP_SCRIPTS = {
    "hello.py": 'print("hello")\n',
    "torch_hello.py": 'import torch\nprint(torch.__version__)\n',
}


def measure_startup(rounds: int) -> None:
    """Time each start-up script as a whole process: python against detrun record and replay."""
    for script, source in STARTUP_SCRIPTS.items():
        with tempfile.TemporaryDirectory() as work:
            Path(work, script).write_text(source)
            env = startup_env(os.path.join(work, "pycache"))
            modes = {
                "python": [sys.executable, script],
                "record": [*DETRUN, "record", "-q", "--force", script],
                "replay": [*DETRUN, "replay", "-q", "trace.zst", script],
            }
            walls: dict[str, list[float]] = {mode: [] for mode in modes}
            for _ in range(rounds + 1):  # the first round fills the bytecode and file caches and is dropped
                for mode, command in modes.items():  # interleaved: each round runs every mode
                    start = time.perf_counter()
                    # A replay of it is UNVERIFIED (exit 5): nothing of a training state to check.
                    result = subprocess.run(command, cwd=work, capture_output=True, env=env)
                    walls[mode].append(time.perf_counter() - start)
                    if result.returncode not in ((0, 5) if mode == "replay" else (0,)):
                        raise subprocess.CalledProcessError(result.returncode, command, result.stdout, result.stderr)
        print(f"\nstartup: {script} as a whole process, with a bytecode cache ({rounds} interleaved rounds, medians)")
        base, best_base = statistics.median(walls["python"][1:]), min(walls["python"][1:])
        print(f"{'mode':<10} {'wall ms':>8} {'added ms':>9} {'best ms':>8} {'added ms':>9}")
        for mode, values in walls.items():
            wall, best = statistics.median(values[1:]), min(values[1:])
            print(f"{mode:<10} {wall * 1e3:8.1f} {(wall - base) * 1e3:9.1f} {best * 1e3:8.1f} "
                  f"{(best - best_base) * 1e3:9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", choices=sorted([*WORKLOADS, "startup"]))
    parser.add_argument("--modes", default=",".join(MODES[1:]),
                        help=f"comma-separated, plain always runs (default: {','.join(MODES[1:])})")
    parser.add_argument("--baseline", metavar="TREE",
                        help="another checkout of detrun (e.g. `git worktree add /tmp/old COMMIT`): adds its "
                             "record and replay as base-record and base-replay, in the same rounds")
    options = parser.parse_args()
    wanted = tuple(mode.strip() for mode in options.modes.split(","))
    if options.baseline:
        if not Path(options.baseline, "detrun", "__init__.py").is_file():
            parser.error(f"--baseline {options.baseline}: no detrun package there")
        wanted += tuple(mode for mode in BASELINE_MODES if mode not in wanted)
    unknown = sorted(set(wanted) - set(MODES) - set(BASELINE_MODES if options.baseline else ()))
    if unknown:
        parser.error(f"unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}")
    for name in [options.only] if options.only else [*WORKLOADS, "startup"]:
        if name == "startup":
            measure_startup(max(options.rounds, 9))
        else:
            measure(name, options.rounds, wanted, options.baseline)


if __name__ == "__main__":
    main()
