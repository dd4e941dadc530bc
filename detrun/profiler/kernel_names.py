"""Name the CUDA kernels behind each flagged op (GPU only; skipped cleanly without CUDA).

During the run the capture keeps, for each flagged CUDA op, an exact copy of the inputs of its
first call.  Afterwards each op is replayed on those copies alone inside a torch.profiler session
that records only CUDA activity, so every kernel in the trace belongs to that op: no correlation
ids to untangle, no profiler overhead on the user's steps, and no clash with a profiler the
script may run itself.  The kernels are those this op launches for these shapes on this GPU,
which is what a patch or a replay check needs to compare.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

import torch

if TYPE_CHECKING:
    from detrun.profiler.capture import OpRecord


_NOT_KERNELS = ("Memcpy", "Memset")


def cuda_usable() -> bool:
    """Say whether a CUDA device can be used in this process."""
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken driver reads as no GPU
        return False


def kernel_names(prof: object) -> list[str]:
    """Return the distinct CUDA kernel names in a finished torch.profiler session, in launch order."""
    names: list[str] = []
    for event in prof.events():  # type: ignore[attr-defined]
        if getattr(event, "device_type", None) != torch.autograd.DeviceType.CUDA:
            continue
        if event.name.startswith(_NOT_KERNELS) or event.name in names:
            continue
        names.append(event.name)
    return names


def capture_kernels(records: Iterable[OpRecord], warn: Callable[[str], None]) -> int:
    """Replay each record's kept inputs under torch.profiler and store its kernel names; return how many."""
    records = [r for r in records if r.probe is not None]
    if not records:
        return 0
    if not cuda_usable():
        for record in records:
            record.probe = None
        return 0
    from torch.profiler import ProfilerActivity, profile

    done = 0
    failed = False
    for record in records:
        args, kwargs = record.probe  # type: ignore[misc]
        record.probe = None  # free the copies whatever happens
        if failed:
            continue
        try:
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA], record_shapes=True) as prof:
                with torch.no_grad():
                    record.func(*args, **kwargs)
                torch.cuda.synchronize()
            record.kernels = kernel_names(prof)
            done += 1
        except Exception as exc:  # noqa: BLE001 - kernel names are a bonus; never fail the report
            warn(f"could not list the CUDA kernels of {record.info.display}: {type(exc).__name__}: {exc}")
            failed = True  # a profiler that fails once (already running, no CUPTI) fails for all
    return done
