"""Two-rank FSDP2 (`fully_shard`) on gloo, unseeded: each rank holds a shard of every parameter."""
import hashlib

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.fsdp import fully_shard


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
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
    weights = b"".join(p.full_tensor().detach().numpy().tobytes() for p in model.parameters())
    print(f"rank {rank} weights sha256 {hashlib.sha256(weights).hexdigest()}")
    dist.barrier()  # every rank done with its collectives before the group goes away
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
