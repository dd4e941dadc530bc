"""Benchmark workload: an unseeded MLP trained for many small CPU steps; prints its loop time.

It prints the loop's CPU time too (one intra-op thread under the benchmark), which a busy machine
disturbs far less than the wall time.
"""
from __future__ import annotations

import sys
import time

import torch
from torch import nn

from instruction_window import close_window, open_window

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
torch.seed()
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
open_window()
start, cpu_start = time.perf_counter(), time.process_time()
for _ in range(steps):
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
close_window()
print(f"loop_seconds {time.perf_counter() - start:.6f}")
print(f"loop_cpu_seconds {time.process_time() - cpu_start:.6f}")
