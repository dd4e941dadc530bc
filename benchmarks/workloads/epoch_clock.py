"""The DataLoader workloads' clock: an epoch's wall time, its CPU time with the workers', and the main process's.

The workers are joined when the epoch ends, so the kernel has added their CPU time to this
process's children by then. Used as `with EpochClock(len(loader)): for batch in loader: ...`;
it prints the lines `benchmarks/overhead.py` reads.
"""
from __future__ import annotations

import resource
import time
from types import TracebackType

from instruction_window import close_window, open_window


class EpochClock:
    """Time the `with` block and print `loop_seconds`, `loop_cpu_seconds`, `loop_main_cpu_seconds`, `loop_batches`."""

    def __init__(self, batches: int) -> None:
        self.batches = batches

    def __enter__(self) -> EpochClock:
        open_window()
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.workers_start = resource.getrusage(resource.RUSAGE_CHILDREN)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        wall, main_cpu = time.perf_counter() - self.start, time.process_time() - self.cpu_start
        close_window()
        workers, before = resource.getrusage(resource.RUSAGE_CHILDREN), self.workers_start
        cpu = main_cpu + workers.ru_utime + workers.ru_stime - before.ru_utime - before.ru_stime
        print(f"loop_seconds {wall:.6f}")
        print(f"loop_cpu_seconds {cpu:.6f}")
        print(f"loop_main_cpu_seconds {main_cpu:.6f}")  # the main process alone, where the per-batch hooks run
        print(f"loop_batches {self.batches}")
