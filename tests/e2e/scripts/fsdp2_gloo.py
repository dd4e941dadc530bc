"""Two-rank FSDP2 (`fully_shard`) on gloo, unseeded: each rank holds a shard of every parameter."""
import gc
import hashlib

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.fsdp import fully_shard


def train() -> str:
    """Train for 6 steps; return the sha256 of the full weights."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(6):
        x = torch.randn(16, 8)
        loss = nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return hashlib.sha256(b"".join(p.full_tensor().detach().numpy().tobytes() for p in model.parameters())).hexdigest()


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    print(f"rank {rank} weights sha256 {train()}")
    gc.collect()  # nothing of the model left for gloo's threads at interpreter exit (see ddp_gloo.py)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
