"""DDP on gloo, one thread per rank: an MLP step of about a millisecond, N steps; rank 0 prints the loop time."""
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

dist.init_process_group("gloo")
torch.set_num_threads(1)
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 500
model = DistributedDataParallel(nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
start = time.perf_counter()
for _ in range(steps):
    loss = nn.functional.cross_entropy(model(x + 0.01 * torch.randn_like(x)), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
if dist.get_rank() == 0:
    print(f"loop_seconds {time.perf_counter() - start:.4f}")
dist.barrier()  # every rank done with its collectives before the group goes away
dist.destroy_process_group()
