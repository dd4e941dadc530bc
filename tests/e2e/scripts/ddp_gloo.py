"""Two-rank DDP on gloo in the style of pytorch/examples: unseeded, so two plain runs differ.

PERTURB_RANK=R nudges rank R's inputs at step PERTURB_STEP (default 5), for the divergence tests.
"""
import gc
import hashlib
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel


def train(rank: int) -> str:
    """Train for 8 steps; return the sha256 of the weights."""
    model = DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    perturb_step = int(os.environ.get("PERTURB_STEP", "5"))
    for step in range(1, 9):
        x = torch.randn(16, 8)
        y = x.sum(dim=1, keepdim=True)
        if os.environ.get("PERTURB_RANK") == str(rank) and step == perturb_step:
            x = x + 1e-3
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    print(f"rank {rank} weights sha256 {train(rank)}")
    # The model and DDP's pending work are gone before the group is: gloo threads still holding
    # tensors at interpreter exit abort the process ("terminate called without an active exception").
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
