"""Check backend flags, CUDA kernel sequences and environment reports on a GPU, and time a ResNet-style step.

One call on a CUDA machine does:
  A. record + replay of examples/gpu_conv_attention.py (conv + SDPA attention, cudnn.benchmark off):
     the replay must be REPRODUCED and the trace must hold the kernel names of steps 1-2;
  B. record with cudnn.benchmark on, replay as is (reported), then replay with
     NVIDIA_TF32_OVERRIDE=0, which makes cuBLAS/cuDNN pick non-TF32 kernels: that replay must be
     DIVERGED on a CUDA kernel, named with the op that launched it, and the environment report must
     class the variable as "can change bits";
  C. replay of B with the script's own cudnn.benchmark switch flipped (GCA_BENCHMARK=0): a backend
     flag divergence (reported);
  D. plain vs record vs replay of a ResNet-style training step, interleaved, median step time;
and writes benchmarks/results/env_<gpu>.md with the device and versions.

Usage:
    python benchmarks/gpu_env_check.py                  # on a GPU machine
    python benchmarks/gpu_env_check.py --dry-run        # the same logic on the CPU (no kernel checks)
Without a GPU (and without --dry-run) it prints a message and exits with status 0. The exit status
is 1 when a check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "gpu_conv_attention.py"
RESULTS = REPO / "benchmarks" / "results"

RESNET_STEP = textwrap.dedent('''
    """A ResNet-style training step (batch 64, 64x64 images); prints the median step time on stderr."""
    import statistics, sys, time
    import torch
    import torch.nn.functional as F
    from torch import nn

    steps, warmup = int(sys.argv[1]), int(sys.argv[2])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = 64 if device.type == "cuda" else 4

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); self.b2 = nn.BatchNorm2d(cout)
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())
        def forward(self, x):
            return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.skip(x))

    model = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                          Basic(64, 64, 1), Basic(64, 128, 2), Basic(128, 256, 2), Basic(256, 512, 2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 100)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images = torch.randn(batch, 3, 64, 64, device=device)
    labels = torch.randint(0, 100, (batch,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for step in range(steps):
        sync()
        start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        if step >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    # On stderr: a timing differs between runs, and stdout is part of what a replay checks.
    print(f"step_ms {statistics.median(times):.4f}", file=sys.stderr)
''')


def detrun_command() -> list[str]:
    """Return the `detrun` console script beside this interpreter (or the module)."""
    beside = Path(sys.executable).with_name("detrun")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "detrun"]


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run a command with extra environment variables; capture its output."""
    full = dict(os.environ)
    full.pop("PYTHONHASHSEED", None)
    full.update(env or {})
    return subprocess.run(args, cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)


def verdict(stderr: str) -> str:
    """Return the verdict line of a replay ('(no verdict)' if there is none)."""
    lines = [l for l in stderr.splitlines() if l.startswith("detrun: ") and
             any(w in l for w in ("REPRODUCED", "DIVERGED", "UNVERIFIED"))]
    return lines[-1][len("detrun: "):] if lines else "(no verdict) " + stderr.strip()[-300:]


def env_lines(stderr: str) -> list[str]:
    """Return the environment report lines of a replay."""
    out, inside = [], False
    for line in stderr.splitlines():
        if line.startswith("detrun: environment differs"):
            inside = True
        elif inside and not line.startswith("detrun:   "):
            inside = False
        if inside:
            out.append(line[len("detrun: "):])
    return out


def kernel_summary(trace: Path) -> dict[str, Any]:
    """Return the kernel steps a trace holds: launches per step and the first few names."""
    from detrun.engine.sources.cuda_kernels import KIND
    from detrun.trace import read_trace
    from detrun.trace.kernel_codec import decode_steps

    steps = decode_steps(read_trace(str(trace)).of(KIND))
    return {"steps": [{"step": s.step, "launches": len(s.kernels), "skipped": s.skipped,
                       "first": [f"{k} ({o})" for k, o in list(zip(s.kernels, s.ops))[:4]]} for s in steps]}


class Report:
    """Collect check results and markdown sections."""

    def __init__(self) -> None:
        self.checks: list[tuple[str, bool | None, str]] = []
        self.sections: list[str] = []

    def check(self, name: str, ok: bool | None, detail: str) -> None:
        mark = {True: "PASS", False: "FAIL", None: "info"}[ok]
        print(f"[{mark}] {name}: {detail}", flush=True)
        self.checks.append((name, ok, detail))

    @property
    def failed(self) -> bool:
        return any(ok is False for _, ok, _ in self.checks)


def check_kernels(report: Report, work: Path, steps: int, on_gpu: bool) -> None:
    """Checks A, B and C."""
    detrun = detrun_command()
    example = [str(EXAMPLE), "--steps", str(steps)]

    # A: benchmark off, plain replay.
    rec = run([*detrun, "record", "-f", "--kernel-steps", "2", "-o", "a.zst", *example], work, {"GCA_BENCHMARK": "0"})
    rep = run([*detrun, "replay", "a.zst", str(EXAMPLE)], work, {"GCA_BENCHMARK": "0"})
    summary = kernel_summary(work / "a.zst") if (work / "a.zst").exists() else {"steps": []}
    captured = [s for s in summary["steps"] if s["launches"]]
    same_output = rec.stdout == rep.stdout
    ok = rep.returncode == 0 and verdict(rep.stderr).startswith("REPRODUCED") and same_output
    report.check("A record+replay (cudnn.benchmark off)", ok, verdict(rep.stderr))
    report.check("A kernel names in the trace", bool(captured) if on_gpu else None,
                 json.dumps(summary["steps"])[:600])
    report.sections.append("### A. record + replay, cudnn.benchmark off\n\n"
                           f"- verdict: `{verdict(rep.stderr)}`\n- stdout identical: {same_output}\n"
                           + "".join(f"- step {s['step']}: {s['launches']} kernel launches"
                                     f"{' (skipped: ' + s['skipped'] + ')' if s['skipped'] else ''}; first: "
                                     f"{', '.join('`' + f + '`' for f in s['first'])}\n" for s in summary["steps"]))

    # B: benchmark on; plain replay, then NVIDIA_TF32_OVERRIDE=0.
    run([*detrun, "record", "-f", "--kernel-steps", "2", "-o", "b.zst", *example], work)
    plain = run([*detrun, "replay", "b.zst", str(EXAMPLE)], work)
    report.check("B replay with cudnn.benchmark on (autotuning may pick other algorithms)", None, verdict(plain.stderr))
    forced = run([*detrun, "replay", "b.zst", str(EXAMPLE)], work, {"NVIDIA_TF32_OVERRIDE": "0"})
    line = verdict(forced.stderr)
    named = re.search(r"CUDA kernel #\d+ of step \d+ is '([^']+)' \(launched by ([^)]+)\)", line)
    report.check("B NVIDIA_TF32_OVERRIDE=0 replay is a kernel divergence naming the kernel",
                 bool(named) and line.startswith("DIVERGED") if on_gpu else None, line)
    classified = any("NVIDIA_TF32_OVERRIDE" in l and "can change bits" in l for l in env_lines(forced.stderr))
    report.check("B environment report classes NVIDIA_TF32_OVERRIDE as 'can change bits'", classified,
                 " | ".join(env_lines(forced.stderr)))
    report.sections.append("### B. recorded with cudnn.benchmark on\n\n"
                           f"- plain replay: `{verdict(plain.stderr)}`\n"
                           f"- replay with `NVIDIA_TF32_OVERRIDE=0`: `{line}`\n"
                           + "".join(f"- `{l}`\n" for l in env_lines(forced.stderr)))

    # C: the script's own flag flipped by its environment: detrun pins it back and says so.
    flipped = run([*detrun, "replay", "b.zst", str(EXAMPLE)], work, {"GCA_BENCHMARK": "0"})
    report.check("C replay with the script's cudnn.benchmark switch flipped", None, verdict(flipped.stderr))
    report.sections.append(f"### C. script flips cudnn.benchmark on replay\n\n- `{verdict(flipped.stderr)}`\n")


def time_resnet(report: Report, work: Path, steps: int, warmup: int, repeats: int) -> None:
    """Check D: plain vs record vs replay, interleaved; median of the per-run median step times."""
    script = work / "resnet_step.py"
    script.write_text(RESNET_STEP)
    detrun = detrun_command()
    argv = [str(script), str(steps), str(warmup)]
    modes = {
        "plain": lambda: run([sys.executable, *argv], work),
        "record": lambda: run([*detrun, "record", "-q", "-f", "-o", "r.zst", *argv], work),
        "replay": lambda: run([*detrun, "replay", "-q", "r.zst"], work),
    }
    step_ms: dict[str, list[float]] = {m: [] for m in modes}
    wall_s: dict[str, list[float]] = {m: [] for m in modes}
    verdicts = []
    for _ in range(repeats):
        for mode, call in modes.items():
            start = time.perf_counter()
            result = call()
            wall_s[mode].append(time.perf_counter() - start)
            match = re.search(r"step_ms ([0-9.]+)", result.stderr)
            if match:
                step_ms[mode].append(float(match.group(1)))
            else:
                print(f"{mode} printed no timing:\n{result.stdout}\n{result.stderr}", file=sys.stderr)
            if mode == "replay":
                verdicts.append(verdict(result.stderr))
    rows = []
    base = statistics.median(step_ms["plain"]) if step_ms["plain"] else None
    for mode in modes:
        med = statistics.median(step_ms[mode]) if step_ms[mode] else None
        ratio = f"{med / base:.3f}x" if med and base else "-"
        rows.append(f"| {mode} | {med:.3f} | {ratio} | {statistics.median(wall_s[mode]):.1f} |" if med else
                    f"| {mode} | - | - | {statistics.median(wall_s[mode]):.1f} |")
    report.check("D ResNet-style step replays", all(v.startswith("REPRODUCED") for v in verdicts) or None,
                 "; ".join(dict.fromkeys(verdicts)))
    report.sections.append(
        f"### D. ResNet-style step: plain vs record vs replay ({repeats} interleaved runs, {steps} steps, "
        f"{warmup} warm-up)\n\n| mode | median step ms | vs plain | median wall s |\n|---|---|---|---|\n"
        + "\n".join(rows) + "\n\nDefault settings: no kernel capture (`--kernel-steps 0`).\n")


def device_facts() -> dict[str, Any]:
    """Return what `detrun env --json` says about the machine."""
    result = subprocess.run([*detrun_command(), "env", "--json"], capture_output=True, text=True, timeout=300)
    try:
        return json.loads(result.stdout)
    except ValueError:
        return {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="run the logic on the CPU (no kernel checks)")
    parser.add_argument("--steps", type=int, default=6, help="steps of the conv+attention example")
    parser.add_argument("--timing-steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="results markdown (default results/env_<gpu>.md)")
    args = parser.parse_args()

    import torch

    on_gpu = bool(torch.cuda.is_available())
    if not on_gpu and not args.dry_run:
        print("gpu_env_check: no CUDA device here; nothing to check (use --dry-run to exercise the script on CPU)")
        return 0
    if args.dry_run:
        args.timing_steps, args.warmup, args.repeats = min(args.timing_steps, 4), min(args.warmup, 1), 1
    facts = device_facts()
    runtime = facts.get("torch", {}).get("runtime", {}) if isinstance(facts.get("torch"), dict) else {}
    devices = facts.get("gpus", {}).get("devices", []) or [{"name": "cpu"}]
    gpu = devices[0].get("name", "cpu")
    slug = re.sub(r"[^a-z0-9]+", "_", gpu.lower().replace("nvidia", "")).strip("_") or "gpu"

    report = Report()
    with tempfile.TemporaryDirectory(prefix="detrun-env-check-") as tmp:
        work = Path(tmp)
        check_kernels(report, work, args.steps, on_gpu)
        time_resnet(report, work, args.timing_steps, args.warmup, args.repeats)

    cuda = facts.get("cuda", {})
    lines = [
        f"# Environment, backend flags and kernel sequences on {gpu}",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- device: {gpu} (compute capability {devices[0].get('compute_capability', '-')}, "
        f"MIG {devices[0].get('mig_mode', '-')}), driver {facts.get('gpus', {}).get('driver', '-')}",
        f"- torch {facts.get('libraries', {}).get('torch', '-')} (CUDA build {cuda.get('torch_build', '-')}), "
        f"cuDNN {runtime.get('cudnn', cuda.get('cudnn', '-')) if isinstance(runtime, dict) else cuda.get('cudnn')}, "
        f"cuBLAS {cuda.get('cublas', '-')}, NCCL {cuda.get('nccl', '-')}",
        f"- CPU {facts.get('cpu', {}).get('model', '-')}, Python {facts.get('python', {}).get('version', '-')}",
        f"- mode: {'GPU' if on_gpu else 'CPU dry run'}",
        "",
        "| check | result | detail |",
        "|---|---|---|",
        *[f"| {name} | {({True: 'PASS', False: 'FAIL', None: 'info'})[ok]} | {detail.replace('|', '/')[:300]} |"
          for name, ok, detail in report.checks],
        "",
        *report.sections,
    ]
    out = args.out or RESULTS / f"env_{slug}{'_dryrun' if not on_gpu else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
