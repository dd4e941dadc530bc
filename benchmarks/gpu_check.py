"""Every check that needs a GPU, in one call (for the lent H100/H200): writes one results file.

    python benchmarks/gpu_check.py               # on the GPU machine; the file lands in $OUT too if set
    python benchmarks/gpu_check.py --dry-run     # without CUDA: the GPT-style timing on the CPU, tiny

It runs, each as its own subprocess so one failure does not hide the others, within BUDGET_S
seconds in all (each check gets what is left, less a reserve for the ones after it):
1. GPT-style step (benchmarks/workloads/gpt_step.py): plain vs `detrun record` vs `detrun replay`
   (default digests) vs `record --digest-every 1`, and the determinism policy's own cost (plain
   with deterministic algorithms, with and without fill_uninitialized_memory), interleaved;
2. the patches: bitwise-identical runs, agreement with torch, each patch's time vs the op it
   replaces and vs torch's deterministic fallback (benchmarks/gpu_patches.py);
3. record → replay of the AdaptiveAvgPool2d + embedding CNN under the strict policy on CUDA;
4. the environment and kernel-sequence checks, and a ResNet-style step plain vs record vs replay
   (benchmarks/gpu_env_check.py);
5. the profiler with CUDA kernel names (benchmarks/gpu_profile.py).
Everything goes into benchmarks/results/gpu_check_<gpu>.md. Without CUDA (and without --dry-run)
it says so and exits 0.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "benchmarks"))
from gpu_env_check import detrun_command  # noqa: E402 - one way to find detrun for every GPU benchmark

# The lent machine's interpreter has no `detrun` script beside it when detrun is only on PYTHONPATH.
DETRUN = detrun_command()
BUDGET_S = 420  # a session's device time is 15 minutes in all: leave room for the start and the copy back
_STARTED = time.monotonic()


def time_left(reserve: float = 0.0) -> int:
    """Return the seconds of the budget left for one check, keeping `reserve` for the later ones."""
    return max(10, int(BUDGET_S - (time.monotonic() - _STARTED) - reserve))


def run(title: str, command: list[str], cwd: Path = REPO, timeout: int = 900) -> tuple[int, str]:
    """Run one check; print and return its exit status and output."""
    print(f"\n== {title}: {' '.join(command)}", flush=True)
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        output = result.stdout + result.stderr
        status = result.returncode
    except subprocess.TimeoutExpired as exc:
        output, status = f"timed out after {timeout}s\n{exc.stdout or ''}{exc.stderr or ''}", 124
    print(output[-6000:], flush=True)
    return status, output


def gpt_step(device: str, reserve: float) -> str:
    """Time the GPT-style step plain, recorded, replayed and under the policy alone; return a section."""
    work = Path(tempfile.mkdtemp(prefix="detrun-gpt-"))
    script = str(REPO / "benchmarks" / "workloads" / "gpt_step.py")
    steps, warmup, rounds = ("100", "10", 3) if device == "cuda" else ("8", "2", 2)
    argv = [script, steps, warmup, "--device", device] + ([] if device == "cuda" else ["--small"])
    modes = {
        "plain": [sys.executable, *argv],
        "record": [*DETRUN, "record", "-q", "-f", "-o", "auto.zst", *argv],
        "replay": [*DETRUN, "replay", "-q", "auto.zst", *argv],
        "record --digest-every 1": [*DETRUN, "record", "-q", "-f", "--digest-every", "1", "-o", "every1.zst", *argv],
        "replay of it": [*DETRUN, "replay", "-q", "every1.zst", *argv],
        "record --policy off (the hooks alone)": [*DETRUN, "record", "-q", "-f", "--policy", "off", "-o",
                                                  "off.zst", *argv],
        "plain, deterministic algorithms": [sys.executable, *argv, "--policy", "det"],
        "plain, det. + fill_uninitialized_memory": [sys.executable, *argv, "--policy", "det-fill"],
        # The strict policy's cuBLAS workspace setting alone (detrun sets it before CUDA starts).
        "plain, det. + CUBLAS_WORKSPACE_CONFIG=:4096:8": ["env", "CUBLAS_WORKSPACE_CONFIG=:4096:8",
                                                          sys.executable, *argv, "--policy", "det"],
    }
    loops: dict[str, list[float]] = {mode: [] for mode in modes}
    verdicts: list[str] = []
    done = 0
    for _ in range(rounds):
        if done and time_left(reserve) < 60:  # keep the other checks' time
            break
        for mode, command in modes.items():
            status, output = run(f"GPT-style step: {mode}", command, work, timeout=time_left(reserve))
            match = re.search(r"loop_seconds ([0-9.]+)", output)
            if match:
                loops[mode].append(float(match.group(1)))
            if mode.startswith("replay"):
                verdicts.append(next((line for line in output.splitlines() if "detrun: " in line and
                                      any(v in line for v in ("REPRODUCED", "DIVERGED", "UNVERIFIED"))),
                                     f"exit {status}, no verdict line"))
        done += 1
    shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(loops["plain"]) if loops["plain"] else None
    rows = []
    for mode, values in loops.items():
        if not values:
            rows.append(f"| {mode} | - | - |")
            continue
        per_step = statistics.median(values) / int(steps) * 1e3
        ratio = f"{statistics.median(values) / base:.3f}x" if base else "-"
        rows.append(f"| {mode} | {per_step:.3f} | {ratio} |")
    return "\n".join([
        f"## GPT-style step on {device} ({done} interleaved rounds, {steps} timed steps after {warmup})", "",
        "| mode | ms/step (median) | vs plain |", "|---|---|---|", *rows, "",
        f"Replays: {sum('REPRODUCED' in v for v in verdicts)} of {len(verdicts)} REPRODUCED"
        + "".join(f"; `{v.strip()}`" for v in verdicts if "REPRODUCED" not in v)[:2000], ""])


def cnn_record_replay(gpu: str, reserve: float) -> str:
    """Record and replay the CNN on CUDA; return a markdown section."""
    work = Path(tempfile.mkdtemp(prefix="detrun-gpu-"))
    example = str(REPO / "examples" / "cnn_adaptive_pool.py")
    plain = [run("plain run", [sys.executable, example, "--device", "cuda"], work, time_left(reserve))[1]
             for _ in range(2)]
    rec_status, recorded = run("record", [*DETRUN, "record", "-f", example, "--device", "cuda"], work,
                               time_left(reserve))
    rep_status, replayed = run("replay", [*DETRUN, "replay", "trace.zst", example], work, time_left(reserve))
    det_status, det_mode = run("torch det mode alone", [sys.executable, "-c",
                               "import runpy, sys, torch; torch.use_deterministic_algorithms(True); "
                               f"sys.argv = [{example!r}, '--device', 'cuda']; runpy.run_path(sys.argv[0], run_name='__main__')"],
                               work, time_left(reserve))
    shutil.rmtree(work, ignore_errors=True)

    def sha(text: str) -> str:
        match = re.search(r"weights sha256 ([0-9a-f]{64})", text)
        return match.group(1)[:16] if match else "none"

    verdict = next((line for line in replayed.splitlines() if "REPRODUCED" in line or "DIVERGED" in line), "none")
    return "\n".join([
        f"## CNN (AdaptiveAvgPool2d + embedding) on {gpu}",
        "",
        f"- plain runs: {sha(plain[0])} / {sha(plain[1])}",
        f"- torch deterministic mode alone: exit {det_status} "
        f"({'RuntimeError' if 'RuntimeError' in det_mode else 'ran'})",
        f"- detrun record: exit {rec_status}, weights {sha(recorded)}",
        f"- detrun replay: exit {rep_status}, weights {sha(replayed)}; `{verdict.strip()}`",
        "",
    ])


def quick_checks(gpu: str) -> str:
    """Record and replay each GPU example, a few times, with and without the kernel capture; return a section.

    The short follow-up to a full check (`--quick`, about 3 minutes): the verdicts, every process's
    exit status, and the Python stack of any crash (PYTHONFAULTHANDLER is on for every run).
    """
    work = Path(tempfile.mkdtemp(prefix="detrun-gpu-quick-"))
    os.environ["PYTHONFAULTHANDLER"] = "1"  # the same for plain, record and replay runs
    gpt = [str(REPO / "benchmarks" / "workloads" / "gpt_step.py"), "20", "2", "--device", "cuda"]
    conv = [str(REPO / "examples" / "gpu_conv_attention.py"), "--steps", "6"]
    cnn = [str(REPO / "examples" / "cnn_adaptive_pool.py"), "--device", "cuda", "--steps", "10"]
    runs = [("GPT plain 1", [sys.executable, *gpt]), ("GPT plain 2", [sys.executable, *gpt])]
    for index, kernel_steps in enumerate(("2", "2", "0", "0")):
        trace = f"gpt{index}.zst"
        runs.append((f"GPT record --kernel-steps {kernel_steps} #{index}",
                     [*DETRUN, "record", "-f", "--kernel-steps", kernel_steps, "-o", trace, *gpt]))
        runs.append((f"GPT replay #{index}", [*DETRUN, "replay", trace, *gpt]))
    os.environ["GCA_BENCHMARK"] = "0"
    runs += [("conv+attention record", [*DETRUN, "record", "-f", "-o", "conv.zst", *conv]),
             ("conv+attention replay", [*DETRUN, "replay", "conv.zst", conv[0]]),
             ("CNN record", [*DETRUN, "record", "-f", "-o", "cnn.zst", *cnn]),
             ("CNN replay", [*DETRUN, "replay", "cnn.zst", cnn[0]])]
    rows = []
    for title, command in runs:
        status, output = run(title, command, work, timeout=time_left(10))
        verdict = next((line.strip() for line in output.splitlines() if line.startswith("detrun: ") and
                        any(v in line for v in ("REPRODUCED", "DIVERGED", "UNVERIFIED"))), "")
        loss = re.findall(r"final loss ([0-9.]+)|weights sha256 ([0-9a-f]{12})", output)
        lines = output.splitlines()
        first = next((i for i, line in enumerate(lines)
                      if line.startswith(("Fatal Python error", "free()", "double free", "malloc", "corrupted"))), None)
        crash = [line.strip() for line in lines[first:first + 12] if line.strip()][:8] if first is not None else []
        rows.append(f"| {title} | {status} | {'/'.join(a or b for a, b in loss[-1:])} | {verdict[:160]} | "
                    f"{'<br>'.join(crash)[:600]} |")
    shutil.rmtree(work, ignore_errors=True)
    return "\n".join([f"## Quick record/replay checks on {gpu}", "",
                      "| run | exit | final loss / weights | verdict | crash lines |", "|---|---|---|---|---|",
                      *rows, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="without CUDA: the GPT-style timing on the CPU")
    parser.add_argument("--quick", action="store_true", help="only the record/replay verdicts and exit statuses")
    options = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("detrun gpu_check: torch is not installed; nothing to check")
        return
    if not torch.cuda.is_available():
        if options.dry_run:
            print(gpt_step("cpu", reserve=0))
            return
        print("detrun gpu_check: no CUDA device here; the GPU checks need one (run this on the lent GPU machine, "
              "or pass --dry-run for the CPU-safe part)")
        return
    gpu = torch.cuda.get_device_name(0)
    slug = re.sub(r"[^a-z0-9]+", "_", gpu.lower()).strip("_")
    RESULTS.mkdir(parents=True, exist_ok=True)
    parts = Path(tempfile.mkdtemp(prefix="detrun-gpu-results-"))
    header = (f"device {gpu}; torch {torch.__version__}; CUDA {torch.version.cuda}; "
              f"cuDNN {torch.backends.cudnn.version()}\n")
    summary = [f"# GPU check on {gpu}", "", header]
    if options.quick:
        summary.append(quick_checks(gpu))
        result = RESULTS / f"gpu_quick_{slug}.md"
        result.write_text("\n".join(summary))
        if os.environ.get("OUT"):
            shutil.copy(result, os.environ["OUT"])
        print("\n".join(summary))
        return
    summary.append(gpt_step("cuda", reserve=270))
    # (title, command, the seconds kept for the checks after it, the markdown file it writes)
    checks = [
        ("patches", [sys.executable, "benchmarks/gpu_patches.py", "--dtypes", "float32,bfloat16",
                     "--out", str(parts / "patches.md")], 150, parts / "patches.md"),
        ("environment, kernels and the ResNet-style step", [sys.executable, "benchmarks/gpu_env_check.py", "--out",
                                                             str(parts / "env.md")], 40, parts / "env.md"),
        ("profiler", [sys.executable, "benchmarks/gpu_profile.py", "--out", str(parts)], 0, None),
    ]
    for index, (title, command, reserve, written) in enumerate(checks):
        if index == 2:  # the CNN before the profiler: a verdict matters more than a profile
            summary.append(cnn_record_replay(gpu, reserve=40))
        status, output = run(title, command, timeout=time_left(reserve))
        summary.append(f"## {title}: exit {status}\n")
        files = [written] if written is not None else sorted(parts.glob("profile_*.md"))
        texts = [f.read_text() for f in files if f is not None and f.exists()]
        summary.append("\n".join(texts) if texts else f"```\n{output[-3000:]}\n```\n")
    summary.append(f"Total {time.monotonic() - _STARTED:.0f} s of a {BUDGET_S} s budget.\n")
    shutil.rmtree(parts, ignore_errors=True)
    result = RESULTS / f"gpu_check_{slug}.md"
    result.write_text("\n".join(summary))
    out = os.environ.get("OUT")
    if out:
        shutil.copy(result, out)
    print("\n".join(summary))


if __name__ == "__main__":
    main()
