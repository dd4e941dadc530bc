"""Benchmark workload: a DataLoader-bound epoch (2 workers, 10^5 samples, shuffled); prints its loop time.

It prints the epoch's CPU time too: the main process's and its workers' (joined when the epoch
ends, so the kernel has added theirs to this process's children), which a busy machine disturbs
less than the wall time; and the main process's alone, where detrun's per-batch hooks run.
"""
from __future__ import annotations

import resource
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


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
    start, cpu_start = time.perf_counter(), time.process_time()
    workers_start = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = 0.0
    for batch in loader:
        total += float(batch[0, 0])
    wall, main_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = main_cpu + workers.ru_utime + workers.ru_stime - workers_start.ru_utime - workers_start.ru_stime
    print(f"loop_seconds {wall:.6f}")
    print(f"loop_cpu_seconds {cpu:.6f}")
    print(f"loop_main_cpu_seconds {main_cpu:.6f}")  # the main process alone, where the per-batch hooks run
    print(f"loop_batches {len(loader)}")
