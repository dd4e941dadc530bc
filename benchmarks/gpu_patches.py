"""Benchmark detrun's deterministic patches on a CUDA GPU: determinism, agreement and speed.

For every patch (one training-sized example each, or all with --all-examples) this:
  * runs torch's original kernel 10 times in default mode and counts distinct bitwise results;
  * runs torch in deterministic mode without the patch: either it raises, or it is timed;
  * installs the patch for CUDA and runs it 10 times under deterministic mode: all results must be
    bitwise identical, and they must agree with the original within float tolerance;
  * times original, torch's deterministic fallback (where one exists) and the patch.

Usage (on a GPU machine):
    python benchmarks/gpu_patches.py --out benchmarks/results/patches_h100.md
Without a GPU it prints a message and exits with status 0. ``--device cpu --small`` is a dry run of
the same logic on the CPU (patches registered for the CPU key), for checking the script itself.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# cuBLAS reads this when its first handle is created: set it before torch touches CUDA.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

import detrun.patches as patches  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the shared op fixtures
from support.patch_examples import EXAMPLES, Call, Example  # noqa: E402

RUNS = 10
GOAL_RATIO = 2.0
DEVICE = torch.device("cuda")


def _synchronize() -> None:
    """Wait for queued GPU work (a no-op on the CPU dry run)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _dispatch_key() -> str:
    """Return the dispatch key the patches are registered for."""
    return "CUDA" if DEVICE.type == "cuda" else "CPU"


@dataclass
class Row:
    """One line of the results table."""

    patch: str
    example: str
    dtype: str
    original_distinct: str = "-"
    torch_det: str = "-"
    patch_identical: str = "-"
    max_diff: str = "-"
    original_ms: float | None = None
    torch_det_ms: float | None = None
    patch_ms: float | None = None
    note: str = ""

    @property
    def ratio(self) -> str:
        """Return patch time over original time, formatted."""
        if self.original_ms and self.patch_ms:
            return f"{self.patch_ms / self.original_ms:.2f}x"
        return "-"

    def cells(self) -> list[str]:
        """Return the markdown cells of this row."""
        ms = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
        return [self.patch, self.example, self.dtype, self.original_distinct, self.torch_det, self.patch_identical,
                self.max_diff, ms(self.original_ms), ms(self.torch_det_ms), ms(self.patch_ms), self.ratio, self.note]


HEADER = ["patch", "example", "dtype", "original: distinct/10", "torch det mode", "patch: identical/10",
          "max abs diff vs original", "original ms", "torch det ms", "patch ms", "patch/original", "note"]


def _outputs(value: Any) -> tuple[torch.Tensor, ...]:
    """Return an op's outputs as a tuple of tensors."""
    return tuple(v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, torch.Tensor))


def _fingerprint(value: Any) -> tuple[bytes, ...]:
    """Return the raw bytes of every output, for bitwise comparison."""
    return tuple(t.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes()
                 if t.is_floating_point() else t.detach().cpu().numpy().tobytes() for t in _outputs(value))


def _distinct(call: Call, runs: int) -> tuple[int, Any]:
    """Run ``call`` ``runs`` times; return the number of distinct bitwise results and the first result."""
    first = None
    seen: set[tuple[bytes, ...]] = set()
    for _ in range(runs):
        result = call.run()
        _synchronize()
        first = result if first is None else first
        seen.add(_fingerprint(result))
    return len(seen), first


def _time_ms(call: Call, repeat: int) -> float:
    """Return the median wall time of one call in milliseconds, measured with CUDA events."""
    for _ in range(3):
        call.run()
    _synchronize()
    samples = []
    for _ in range(repeat):
        if DEVICE.type != "cuda":
            begin = time.perf_counter()
            call.run()
            samples.append((time.perf_counter() - begin) * 1e3)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call.run()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def _valid_median_indices(call: Call, result: Any) -> bool:
    """Return whether median indices point at elements equal to the median values (ties may pick any)."""
    values, indices = _outputs(result)
    source, dim, keepdim = call.args[0], call.args[1], call.args[2]
    picked = source.gather(dim, indices if keepdim else indices.unsqueeze(dim))
    picked = picked if keepdim else picked.squeeze(dim)
    return bool(torch.equal(torch.nan_to_num(picked, 1e30), torch.nan_to_num(values, 1e30)))


def _max_diff(reference: Any, result: Any, example: Example, call: Call) -> tuple[str, bool]:
    """Return the largest absolute difference (formatted) and whether it is within tolerance."""
    worst, ok = 0.0, True
    if example.patch in ("median_dim", "nanmedian_dim"):
        # Among tied elements any index is a correct answer: check validity, compare the values only.
        ok = _valid_median_indices(call, result)
        reference, result = _outputs(reference)[0], _outputs(result)[0]
    for want, got in zip(_outputs(reference), _outputs(result)):
        if want.shape != got.shape:
            return f"shape {tuple(got.shape)} != {tuple(want.shape)}", False
        if not want.is_floating_point():
            same = bool(torch.equal(want, got))
            ok &= same
            worst = max(worst, 0.0 if same else math.inf)
            continue
        want64, got64 = torch.nan_to_num(want.double()), torch.nan_to_num(got.double())
        diff = float((want64 - got64).abs().max()) if want.numel() else 0.0
        scale = float(want64.abs().max()) if want.numel() else 0.0
        tolerance = (1e-4 if want.dtype == torch.float32 else 2e-2) * max(scale, 1.0)
        ok &= diff <= tolerance
        worst = max(worst, diff)
    return f"{worst:.2e}", ok


def _with_deterministic(enabled: bool):
    """Return a context manager setting torch's deterministic mode."""

    class _Mode:
        def __enter__(self) -> None:
            self.previous = torch.are_deterministic_algorithms_enabled()
            torch.use_deterministic_algorithms(enabled)

        def __exit__(self, *exc: object) -> None:
            torch.use_deterministic_algorithms(self.previous)

    return _Mode()


def bench(example: Example, dtype: torch.dtype, repeat: int, small: bool) -> Row:
    """Measure one example: determinism, agreement and time for original, torch det mode and the patch."""
    row = Row(example.patch, example.label, str(dtype).removeprefix("torch."))
    patches.uninstall()
    try:
        call = example.build(DEVICE, dtype, not small)
        with _with_deterministic(False):
            distinct, original = _distinct(call, RUNS)
            row.original_distinct = f"{distinct}/{RUNS}"
            row.original_ms = _time_ms(call, repeat)
        with _with_deterministic(True):
            try:
                det_distinct, _ = _distinct(call, 3)
                row.torch_det = "ok" if det_distinct == 1 else f"{det_distinct} distinct/3"
                row.torch_det_ms = _time_ms(call, repeat)
            except RuntimeError as error:
                row.torch_det = "raises" if "deterministic" in str(error) else f"error: {str(error)[:60]}"
            patch = patches.REGISTRY[example.patch]
            patches.install([example.patch], dispatch_key=_dispatch_key())
            calls = patch.calls
            distinct, patched = _distinct(call, RUNS)
            if patch.calls == calls:
                row.note = "patch not reached!"
            row.patch_identical = f"{RUNS - distinct + 1}/{RUNS}" if distinct > 1 else f"{RUNS}/{RUNS}"
            row.max_diff, agrees = _max_diff(original, patched, example, call)
            if not agrees:
                row.note = (row.note + " disagrees with original").strip()
            row.patch_ms = _time_ms(call, repeat)
        if row.original_ms and row.patch_ms and row.patch_ms > GOAL_RATIO * row.original_ms:
            row.note = (row.note + f" over {GOAL_RATIO:g}x goal").strip()
    except torch.cuda.OutOfMemoryError:
        row.note = "out of memory"
    except Exception as error:  # one broken case must not hide the others
        row.note = f"error: {type(error).__name__}: {str(error)[:80]}"
    finally:
        patches.uninstall()
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
    return row


def environment() -> list[str]:
    """Return the lines describing the machine and the library versions."""
    if DEVICE.type != "cuda":
        return [f"- device: CPU dry run ({platform.processor() or platform.machine()}), torch: {torch.__version__}"]
    props = torch.cuda.get_device_properties(0)
    return [
        f"- device: {torch.cuda.get_device_name(0)} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor})",
        f"- torch: {torch.__version__}, CUDA: {torch.version.cuda}, cuDNN: {torch.backends.cudnn.version()}",
        f"- python: {platform.python_version()}, host: {platform.node()}",
        f"- CUBLAS_WORKSPACE_CONFIG: {os.environ.get('CUBLAS_WORKSPACE_CONFIG')}, TF32 matmul: "
        f"{torch.backends.cuda.matmul.allow_tf32}, cudnn.benchmark: {torch.backends.cudnn.benchmark}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
    ]


def to_markdown(rows: list[Row], env: list[str], elapsed: float) -> str:
    """Render the environment and the results table as markdown."""
    lines = ["# detrun patches on GPU", "", *env, "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    failures = [r for r in rows if r.patch_identical not in (f"{RUNS}/{RUNS}",) or "disagrees" in r.note or "error" in r.note]
    slow = [r for r in rows if "goal" in r.note]
    lines += [
        "",
        f"Times are medians of CUDA-event timings per call; put_ rows include the clone of the target. "
        f"'torch det mode' is torch with use_deterministic_algorithms(True) and no patch. "
        f"Goal: patch/original <= {GOAL_RATIO:g}x.",
        f"Summary: {len(rows)} cases, {len(failures)} with a determinism/agreement problem, "
        f"{len(slow)} over the speed goal; {elapsed:.0f}s.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the markdown report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="markdown file to write (default benchmarks/results/patches_<gpu>.md)")
    parser.add_argument("--patch", action="append", default=[], help="only this patch (repeatable)")
    parser.add_argument("--all-examples", action="store_true", help="every example of a patch, not just the first")
    parser.add_argument("--dtypes", default="float32", help="comma-separated, e.g. float32,bfloat16")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per measurement")
    parser.add_argument("--small", action="store_true", help="test-sized inputs (a quick smoke run)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: dry run of the script logic")
    args = parser.parse_args(argv)

    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        print("gpu_patches: no CUDA device available; nothing to benchmark (run this on a GPU machine).", file=sys.stderr)
        return 0

    unknown = set(args.patch) - set(patches.names())
    if unknown:
        parser.error(f"unknown patch(es): {', '.join(sorted(unknown))}")
    wanted_dtypes = [getattr(torch, name.strip()) for name in args.dtypes.split(",") if name.strip()]
    selected: list[Example] = []
    for name in patches.names():
        if args.patch and name not in args.patch:
            continue
        examples = [e for e in EXAMPLES if e.patch == name]
        selected += examples if args.all_examples else examples[:1]

    started = time.perf_counter()
    rows: list[Row] = []
    for example in selected:
        dtypes = [d for d in wanted_dtypes if d in example.dtypes] or [example.dtypes[0]]
        for dtype in dtypes:
            row = bench(example, dtype, args.repeat, args.small)
            rows.append(row)
            print(" | ".join(row.cells()), file=sys.stderr, flush=True)

    report = to_markdown(rows, environment(), time.perf_counter() - started)
    print(report)
    name = torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "cpu_dry_run"
    slug = "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")
    out = args.out or Path(__file__).resolve().parent / "results" / f"patches_{slug}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    print(f"gpu_patches: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
