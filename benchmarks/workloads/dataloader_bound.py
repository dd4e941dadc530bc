"""Benchmark workload: a DataLoader-bound epoch (2 workers, 10^5 samples, shuffled); prints its loop time.

It prints the epoch's CPU time too: the main process's and its workers' (joined when the epoch
ends, so the kernel has added theirs to this process's children), which a busy machine disturbs
less than the wall time; and the main process's alone, where detrun's per-batch hooks run.
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from epoch_clock import EpochClock


class Synthetic(Dataset):
    def __init__(self, size: int) -> None:
        self.data = torch.arange(size * 8, dtype=torch.float32).reshape(size, 8)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index] + float(np.random.rand())  # augmentation in the worker


if __name__ == "__main__":
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    generator = torch.Generator()
    generator.manual_seed(torch.seed())
    loader = DataLoader(Synthetic(samples), batch_size=256, shuffle=True, num_workers=2, generator=generator,
                        multiprocessing_context="fork")
    with EpochClock(len(loader)):
        total = 0.0
        for batch in loader:
            total += float(batch[0, 0])
