"""Profile examples/profile_ops.py on a CUDA GPU and write benchmarks/results/profile_<gpu>.md.

The report records the device, torch/CUDA/cuDNN versions and, for every flagged op, the user
call site, the knowledge base's claim, whether the empirical check saw different bits on this
GPU, and the CUDA kernels the op launched.  Run it on the H100 machine:

    python benchmarks/gpu_profile.py [--steps 5] [--out benchmarks/results]

Without CUDA it says so and exits 0 without writing anything.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "profile_ops.py")


def slug(text: str) -> str:
    """Make a file-name-safe lower-case slug of a GPU name."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "gpu"


def run_profile(steps: int, json_path: str) -> subprocess.CompletedProcess[str]:
    """Profile the example on CUDA through the real CLI, judging ops on the device they ran on."""
    command = [sys.executable, "-m", "detrun", "profile", "--steps", str(steps), "--device", "auto",
               "--all", "--json", json_path, EXAMPLE, "--device", "cuda", "--steps", str(steps + 5)]
    return subprocess.run(command, cwd=REPO, text=True, capture_output=True)


def render(data: dict, stderr_text: str) -> str:
    """Turn the profile JSON into the markdown report."""
    import torch

    lines = [f"# detrun profile on {data['gpu']}", "",
             f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
             f"- device: {data['gpu']}",
             f"- torch {data['torch_version']}, CUDA {torch.version.cuda}, "
             f"cuDNN {torch.backends.cudnn.version()}",
             f"- detrun {data['detrun_version']}, python {data['python_version']}",
             f"- script: examples/profile_ops.py, {data['steps']['completed']} optimizer steps",
             f"- empirical check: {data['empirical']['signatures_checked']} signatures re-run twice "
             f"in {data['empirical']['seconds']:.2f} s", "",
             "| op | count | call site | on CUDA (KB) | det mode | measured on this GPU | patch | CUDA kernels |",
             "|---|---|---|---|---|---|---|---|"]
    for op in data["ops"]:
        if op["severity"] == "ok" and not op["kernels"]:
            continue
        site = op["call_site"]
        where = f"{os.path.relpath(site['file'], REPO) if site['file'].startswith(REPO) else site['file']}:{site['line']}"
        kb = ("unknown" if op["nondeterministic_cuda"] is None
              else "nondeterministic" if op["nondeterministic_cuda"] else "deterministic")
        det = ("raises" if op["raises_in_det_mode"] else "fixed" if op["det_mode_fixes"] else "-")
        measured = {True: "**differs**", False: "same", None: "not run"}[op["measured_nondeterministic"]]
        kernels = "<br>".join(f"`{k}`" for k in op["kernels"]) or "-"
        lines.append(f"| `{op['op']}` | {op['count']} | {where} | {kb} | {det} | {measured} | "
                     f"{op['patch'] or 'none'} | {kernels} |")
    lines += ["", "## detrun's stderr", "", "```", stderr_text.rstrip(), "```", ""]
    return "\n".join(lines)


def main() -> int:
    """Profile the example on CUDA and write the markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_profile: no CUDA device here; run this on a GPU machine. Nothing written.")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        json_path = os.path.join(tmp, "profile.json")
        result = run_profile(args.steps, json_path)
        sys.stderr.write(result.stderr)
        if result.returncode != 0 or not os.path.exists(json_path):
            print(f"gpu_profile: detrun profile failed with status {result.returncode}", file=sys.stderr)
            return 1
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"profile_{slug(data['gpu'] or 'gpu')}.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(render(data, result.stderr))
    print(f"gpu_profile: wrote {os.path.relpath(path, REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
