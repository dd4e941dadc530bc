"""A DataLoader-driven CPU training run whose data order and augmentation are never seeded.

The dataset lists its files with os.listdir (file-system order), augments in __getitem__ with
numpy's global RNG (seeded per worker from the loader's base seed), and the loader shuffles
with a generator seeded by torch.seed(). Two workers, fork or spawn.

    python examples/train_dataloader.py --data DIR --context fork
    detrun record examples/train_dataloader.py --data DIR --context spawn

The data directory is created with --make-data N (files written in the order given by
--make-order: forward or reverse). AUGMENT_SCALE changes the augmentation (to test DIVERGED).
"""
from __future__ import annotations

import argparse
import hashlib
import os

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class FileDataset(Dataset):
    """One small float vector per file, with a label in its name."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.files = os.listdir(directory)  # deliberately unsorted: order is the file system's
        self.scale = float(os.environ.get("AUGMENT_SCALE", "0.1"))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        name = self.files[index]
        with open(os.path.join(self.directory, name), encoding="ascii") as f:
            values = np.array([float(v) for v in f.read().split()], dtype=np.float32)
        values += np.random.normal(0, self.scale, size=values.shape).astype(np.float32)  # unseeded augmentation
        return torch.from_numpy(values), int(name.split("_")[0])


def make_data(directory: str, count: int, order: str) -> None:
    """Write `count` sample files, in forward or reverse creation order."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(1234)  # the data itself is fixed
    samples = [(i, rng.normal(size=8)) for i in range(count)]
    for i, values in (reversed(samples) if order == "reverse" else samples):
        label = int(values.sum() > 0)
        with open(os.path.join(directory, f"{label}_{i:05d}.txt"), "w", encoding="ascii") as f:
            f.write(" ".join(f"{v:.6f}" for v in values))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--make-data", type=int, default=0, metavar="N")
    parser.add_argument("--make-order", choices=["forward", "reverse"], default="forward")
    parser.add_argument("--context", choices=["fork", "spawn"], default="fork")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--persistent", action="store_true")
    args = parser.parse_args()
    if args.make_data:
        make_data(args.data, args.make_data, args.make_order)
        return

    generator = torch.Generator()
    generator.manual_seed(torch.seed())  # a nondeterministic shuffle seed
    loader = DataLoader(FileDataset(args.data), batch_size=16, shuffle=True, generator=generator,
                        num_workers=args.workers, multiprocessing_context=args.context if args.workers else None,
                        persistent_workers=args.persistent and args.workers > 0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(args.epochs):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    print(f"final loss {loss.item():.6f}")
    print(f"weights sha256 {digest.hexdigest()}")


if __name__ == "__main__":
    main()
