"""Benchmark workload: CIFAR-sized batches (128 x 3 x 32 x 32 float32, 1.5 MB) from 2 workers; prints its loop time.

Each batch's bytes are digested once, by detrun; where that happens is what this workload shows:
`loop_main_cpu_seconds` is the main process's CPU time, the process that feeds a GPU in a real run.
The program reads every batch once (its mean), as a training step would.
"""
from __future__ import annotations

import sys

import torch
from torch.utils.data import DataLoader, Dataset

from epoch_clock import EpochClock


class Images(Dataset):
    def __init__(self, size: int) -> None:
        self.data = torch.rand(size, 3, 32, 32)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.data[index] * 1.01, index  # a transform in the worker


if __name__ == "__main__":
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 12_800
    loader = DataLoader(Images(samples), batch_size=128, shuffle=True, num_workers=2, multiprocessing_context="fork")
    with EpochClock(len(loader)):
        total = 0.0
        for images, _labels in loader:
            total += float(images.mean())
