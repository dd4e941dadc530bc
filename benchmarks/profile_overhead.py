"""How much `detrun profile` slows a training step down, and what the empirical check costs.

Measured in one process, side by side and interleaved (plain, profiled, plain, profiled, ...) so
that drift in machine load hits both alike; each number is the median over several rounds.

- steady-state slowdown: a profiled step once every op signature has been seen (capture only:
  dispatch mode, call sites, counts) divided by a plain step.  Goal: <= 3x.
- empirical check: the one-time cost of re-running each new op signature twice, i.e. the first
  profiled step with the check minus the first profiled step without it.

Run: python benchmarks/profile_overhead.py [--rounds 7] [--steps 10] [--device cpu|cuda]
Not part of the test suite; it prints numbers, it does not pass or fail.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from detrun.profiler.capture import OpCapture
from detrun.profiler.kb import KnowledgeBase

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "profile_ops.py")


class SmallCNN(nn.Module):
    """A VGG-ish step on 32x32 images: big enough that per-op work is not all Python dispatch."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d((4, 4)))
        self.embed = nn.Embedding(100, 2 * width)
        self.classifier = nn.Linear(2 * width * 16, 10)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Run the model."""
        x = self.features(images)
        x = x + self.embed(tokens).mean(1)[:, :, None, None]
        return self.classifier(x.flatten(1))


class TinyTransformer(nn.Module):
    """Two transformer encoder layers on 64 tokens: many small ops, the hard case for a Python hook."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, width)
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, 1000)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the model."""
        return self.head(self.encoder(self.embed(tokens)))


def make_steps(device: torch.device) -> dict[str, Callable[[], None]]:
    """Build one training-step closure per model."""
    torch.manual_seed(0)
    cnn = SmallCNN(32).to(device)
    cnn_opt = torch.optim.SGD(cnn.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(32, 3, 32, 32, device=device)
    tokens = torch.randint(0, 100, (32, 8), device=device)
    labels = torch.randint(0, 10, (32,), device=device)

    def cnn_step() -> None:
        """Run one CNN training step."""
        cnn_opt.zero_grad()
        F.cross_entropy(cnn(images, tokens), labels).backward()
        cnn_opt.step()

    tr = TinyTransformer(128).to(device)
    tr_opt = torch.optim.AdamW(tr.parameters(), lr=1e-3)
    seq = torch.randint(0, 1000, (16, 64), device=device)

    def transformer_step() -> None:
        """Run one transformer training step."""
        tr_opt.zero_grad()
        logits = tr(seq)
        F.cross_entropy(logits.flatten(0, 1), seq.flatten()).backward()
        tr_opt.step()

    # The bundled example: tiny tensors, so nearly all its time is per-op Python dispatch.  This
    # is the worst case for any Python-level hook, shown for honesty rather than as a goal.
    spec = importlib.util.spec_from_file_location("profile_ops_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)  # type: ignore[union-attr]
    seg = example.SegNet().to(device)
    seg_opt = torch.optim.SGD(seg.parameters(), lr=0.05)
    seg_images = torch.randn(4, 3, 8, 8, device=device)
    seg_tokens = torch.randint(0, example.VOCAB, (4, 10), device=device)
    seg_slots = torch.randint(0, example.SLOTS, (10,), device=device)
    seg_labels = torch.randint(0, example.CLASSES, (4, 4, 4), device=device)

    def example_step() -> None:
        """Run one step of examples/profile_ops.py's model."""
        logits = seg(seg_images, seg_tokens, seg_slots)
        weights = example.class_weights(seg_labels, torch.ones(seg_labels.shape, device=device))
        loss = F.nll_loss(F.log_softmax(logits, dim=1), seg_labels, weight=weights)
        seg_opt.zero_grad()
        loss.backward()
        seg_opt.step()

    return {"cnn (batch 32, 32x32)": cnn_step, "transformer (16x64 tokens, width 128)": transformer_step,
            "examples/profile_ops.py (tiny tensors: dispatch-bound worst case)": example_step}


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so timings include it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step: Callable[[], None], n: int, device: torch.device, capture: OpCapture | None = None) -> float:
    """Return seconds per step over n steps, optionally inside the capture mode."""
    _sync(device)
    start = time.perf_counter()
    if capture is None:
        for _ in range(n):
            step()
    else:
        with capture:
            for _ in range(n):
                step()
    _sync(device)
    return (time.perf_counter() - start) / n


def new_capture(kb: KnowledgeBase, empirical: bool) -> OpCapture:
    """Build a fresh op capture judging ops by CUDA behaviour."""
    return OpCapture(kb, kb_device="cuda", run_empirical=empirical, keep_kernel_probes=False,
                     on_hook_error=lambda message: print(f"hook error: {message}", file=sys.stderr))


def main() -> None:
    """Time plain and profiled steps, interleaved, and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kb = KnowledgeBase.load(torch.__version__)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds x {args.steps} steps, medians")
    for name, step in make_steps(device).items():
        for _ in range(3):
            step()  # warm-up: allocator, lazy inits
        plain, steady, first_with, first_without, check_seconds = [], [], [], [], []
        for round_index in range(args.rounds):
            # Alternate the order inside each round so neither side always runs second.
            order = ("plain", "profiled") if round_index % 2 == 0 else ("profiled", "plain")
            for which in order:
                if which == "plain":
                    plain.append(timed(step, args.steps, device))
                else:
                    warm = new_capture(kb, empirical=False)
                    timed(step, 1, device, warm)  # every signature seen: later steps are steady state
                    steady.append(timed(step, args.steps, device, warm))
            # One-time cost: a fresh capture's first step, with and without the empirical check.
            with_check = new_capture(kb, empirical=True)
            first_with.append(timed(step, 1, device, with_check))
            check_seconds.append(with_check.check_seconds)
            first_without.append(timed(step, 1, device, new_capture(kb, empirical=False)))
        p, s = statistics.median(plain), statistics.median(steady)
        fw, fwo = statistics.median(first_with), statistics.median(first_without)
        print(f"\n{name}")
        print(f"  plain step                       {p * 1e3:8.2f} ms")
        print(f"  profiled step (steady state)     {s * 1e3:8.2f} ms   slowdown {s / p:5.2f}x  (goal <= 3x)")
        print(f"  first profiled step, no check    {fwo * 1e3:8.2f} ms")
        print(f"  first profiled step, with check  {fw * 1e3:8.2f} ms   empirical check costs "
              f"{(fw - fwo) * 1e3:.1f} ms once ({(fw - fwo) / p:.1f} plain steps); "
              f"time inside the re-runs {statistics.median(check_seconds) * 1e3:.1f} ms, "
              f"{with_check.checks_run} signatures")


if __name__ == "__main__":
    main()
