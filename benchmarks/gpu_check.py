"""Every check that needs a GPU, in one call (for the lent H100/H200): writes benchmarks/results/*.md.

    python benchmarks/gpu_check.py            # on the GPU machine; results land in $OUT too if set

It runs, each as its own subprocess so one failure does not hide the others:
1. the patches: 10 bitwise-identical runs each, agreement with torch, time vs the original and
   vs torch's deterministic fallback (benchmarks/gpu_patches.py);
2. record → replay of the AdaptiveAvgPool2d + embedding CNN under the strict policy on CUDA
   (no RuntimeError, identical final weights);
3. the profiler with CUDA kernel names (benchmarks/gpu_profile.py);
4. the environment and kernel-sequence checks (benchmarks/gpu_env_check.py).
Without CUDA it says so and exits 0.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DETRUN = [str(Path(sys.executable).with_name("detrun"))]


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


def cnn_record_replay(gpu: str) -> str:
    """Record and replay the CNN on CUDA; return a markdown section."""
    work = Path(tempfile.mkdtemp(prefix="detrun-gpu-"))
    example = str(REPO / "examples" / "cnn_adaptive_pool.py")
    plain = [run("plain run", [sys.executable, example, "--device", "cuda"], work)[1] for _ in range(2)]
    rec_status, recorded = run("record", [*DETRUN, "record", "-f", example, "--device", "cuda"], work)
    rep_status, replayed = run("replay", [*DETRUN, "replay", "trace.zst", example], work)
    det_status, det_mode = run("torch det mode alone", [sys.executable, "-c",
                               "import runpy, sys, torch; torch.use_deterministic_algorithms(True); "
                               f"sys.argv = [{example!r}, '--device', 'cuda']; runpy.run_path(sys.argv[0], run_name='__main__')"],
                               work)
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


def main() -> None:
    try:
        import torch
    except ImportError:
        print("detrun gpu_check: torch is not installed; nothing to check")
        return
    if not torch.cuda.is_available():
        print("detrun gpu_check: no CUDA device here; the GPU checks need one (run this on the lent GPU machine)")
        return
    gpu = torch.cuda.get_device_name(0)
    slug = re.sub(r"[^a-z0-9]+", "_", gpu.lower()).strip("_")
    RESULTS.mkdir(parents=True, exist_ok=True)
    header = (f"device {gpu}; torch {torch.__version__}; CUDA {torch.version.cuda}; "
              f"cuDNN {torch.backends.cudnn.version()}\n")
    checks = [
        ("patches", [sys.executable, "benchmarks/gpu_patches.py", "--all-examples", "--dtypes", "float32,bfloat16",
                     "--out", str(RESULTS / f"patches_{slug}.md")]),
        ("profiler", [sys.executable, "benchmarks/gpu_profile.py"]),
        ("environment and kernels", [sys.executable, "benchmarks/gpu_env_check.py"]),
    ]
    summary = [f"# GPU check on {gpu}", "", header]
    for title, command in checks:
        if not (REPO / command[1]).exists():
            summary.append(f"- {title}: {command[1]} missing")
            continue
        status, _ = run(title, command)
        summary.append(f"- {title}: exit {status}")
    summary.append("")
    summary.append(cnn_record_replay(gpu))
    (RESULTS / f"gpu_check_{slug}.md").write_text("\n".join(summary))
    out = os.environ.get("OUT")
    if out:
        for path in RESULTS.glob(f"*{slug}*.md"):
            shutil.copy(path, out)
    print("\n".join(summary))


if __name__ == "__main__":
    main()
