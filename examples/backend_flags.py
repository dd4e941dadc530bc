"""A small CPU training run that changes backend flags mid-run and prints the flags it sees at each step.

It turns on cudnn.benchmark after step BENCHMARK_STEP (default 2) and lowers the float32 matmul
precision after step PRECISION_STEP (default 4). detrun records both changes with their step and
replays them; forcing another step on replay (BENCHMARK_STEP=1) is a divergence. The loss is
weighted by a large float32 sum whose bits depend on the intra-op thread count, which NTHREADS sets.

    python examples/backend_flags.py --steps 6
    detrun record examples/backend_flags.py
    detrun replay trace.zst                      # REPRODUCED, the same lines on stdout
    BENCHMARK_STEP=1 detrun replay trace.zst     # DIVERGED: the flag changed at another step
"""
from __future__ import annotations

import argparse
import hashlib
import os

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=6)
args = parser.parse_args()

if os.environ.get("NTHREADS"):
    torch.set_num_threads(int(os.environ["NTHREADS"]))
benchmark_step = int(os.environ.get("BENCHMARK_STEP", "2"))
precision_step = int(os.environ.get("PRECISION_STEP", "4"))

model = nn.Sequential(nn.Linear(256, 512), nn.Tanh(), nn.Linear(512, 256))
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
inputs = torch.randn(512, 256)  # unseeded: the recording holds torch's seed
# The sum of 4M floats rounds differently with the intra-op thread count (each thread sums its own
# part); it weights the loss, so the weights depend on the thread count.
bank = torch.randn(1 << 22, generator=torch.Generator().manual_seed(0))
loss_weight = bank.sum().abs() / 1000


def flags() -> str:
    return (f"benchmark={torch.backends.cudnn.benchmark} precision={torch.get_float32_matmul_precision()} "
            f"deterministic={torch.are_deterministic_algorithms_enabled()} threads={torch.get_num_threads()}")


for step in range(1, args.steps + 1):
    out = model(inputs)
    centred = out - out.mean()
    loss = torch.sqrt((centred * centred).mean()) * loss_weight
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step}: {flags()}")
    if step == benchmark_step:
        torch.backends.cudnn.benchmark = True
    if step == precision_step:
        torch.set_float32_matmul_precision("medium")

digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode())
    digest.update(tensor.numpy().tobytes())
print(f"weights sha256 {digest.hexdigest()}")
