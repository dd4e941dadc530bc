"""The CUDA kernels of the first K optimizer steps: recorded, and compared on replay.

For each of the first `kernel_steps` optimizer steps (a session setting, default 0: opt-in) the names of
the CUDA kernels launched, and the op that launched each, are captured with torch.profiler (CPU
and CUDA activity) and stored as one event per step:

    `kernels` — {"step": k, "strings": [new names], "kernels": ids, "ops": ids}
                or {"step": k, "skipped": reason}

The bytes of that event (a growing string table, packed ids) are `detrun.trace.kernel_codec`'s;
this module is the capture.

Step 1 is captured from the moment CUDA is initialised (`torch.cuda._lazy_call`: never earlier,
because starting CUPTI would initialise the driver before the script could set
CUDA_VISIBLE_DEVICES) to the end of optimizer step 1; step k from the end of step k - 1 to the end
of step k. Kernels are ordered by their launch (CUPTI correlation id), which a deterministic program
repeats exactly even where kernels overlap on the device. A replay captures the same steps and, on
a mismatch, names the first differing kernel and the op that launched it.

On a machine without CUDA (a CPU build of torch, or no device) this does nothing at all. If the
script starts a profiler of its own, the capture in progress is abandoned (recorded as skipped), so
the script's profiler works as it would without detrun.
"""
from __future__ import annotations

import os
import re
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable

from detrun.engine.step_clock import Tick
from detrun.trace.kernel_codec import (
    MAX_LAUNCHES,
    StepKernels,
    StringTable,
    decode_steps,
    describe_difference,
    encode_step,
    skipped_step,
)
from detrun.trace.registry import KERNELS as KIND  # the kind, its payload schema and version

if TYPE_CHECKING:
    from detrun.engine.session import Session

# Off unless the recording asks (`record --kernel-steps K`): on an H200 with torch 2.11 and CUDA 13,
# a process that had run this capture aborted with heap corruption while collecting garbage at exit
# (benchmarks/results/gpu_quick_nvidia_h200.md), in the recording and in the replay.
DEFAULT_STEPS = 0
_NOT_KERNELS = ("Memcpy", "Memset")
# CPU events of the profiler's own bookkeeping. Seen on an H200 with torch 2.11: their ids collide
# with the ops' ids, and every kernel of a step read as "launched by Activity Buffer Request".
_PROFILER_OWN_EVENTS = frozenset({"Activity Buffer Request", "Iteration Start: PyTorch Profiler",
                                  "Record Window End", "ProfilerStep"})


def kernel_launches(events: Iterable[Any], cpu: Any, cuda: Any) -> list[tuple[str, str]]:
    """Return (kernel, op) for the CUDA kernels among profiler events, in launch order.

    `events` are torch.profiler FunctionEvents (or anything with `name`, `id`, `device_type` and
    `linked_correlation_id`): a device event's `linked_correlation_id` is the `id` of the CPU op
    that was innermost on its thread when the kernel was launched, and its own `id` is the CUPTI
    correlation id, which increases with every launch.
    """
    ops: dict[int, str] = {}
    kernels: list[tuple[int, str, int]] = []
    for event in events:
        device = getattr(event, "device_type", None)
        if device == cpu:
            # Ops only: runtime calls (cudaLaunchKernel) are CPU events too, linked to their op, and
            # their own ids are CUPTI's, which may collide with op ids (torch's parser does the same).
            if not getattr(event, "linked_correlation_id", 0) and str(event.name) not in _PROFILER_OWN_EVENTS:
                ops.setdefault(int(getattr(event, "id", -1)), str(event.name))
        elif device == cuda:
            name = str(event.name)
            if name.startswith(_NOT_KERNELS):
                continue
            kernels.append((int(getattr(event, "id", 0)), name, int(getattr(event, "linked_correlation_id", 0) or 0)))
    kernels.sort(key=lambda k: k[0])
    return [(name, ops.get(linked, "an unknown op")) for _, name, linked in kernels]


# ------------------------------------------------------------------------------ the capture


class KernelSequence:
    """Capture the CUDA kernels of the first K optimizer steps; record them or compare them."""

    def __init__(self) -> None:
        self._session: Session | None = None
        self._torch: Any = None
        self._wanted = 0
        self._profiler: Any = None
        self._abandoned: str | None = None
        self._own_start = False
        self._subscribed = False
        self._patches: list[tuple[Any, str, Any]] = []
        self._table = StringTable()
        self._recorded: dict[int, StepKernels] = {}
        self._captured = 0

    def install(self, session: Session) -> None:
        if self._session is not None:
            return
        self._session = session
        try:
            self._wanted = max(0, int(session.settings.get("kernel_steps", DEFAULT_STEPS)))
        except (TypeError, ValueError):
            self._wanted = DEFAULT_STEPS
        if not session.recording:
            self._recorded = {s.step: s for s in decode_steps(session.recorded(KIND))}
        if self._wanted == 0:
            return
        session.when_imported("torch", self._hook)
        session.on_stop(self._finish)

    def uninstall(self) -> None:
        self._stop(keep=False)
        if self._subscribed and self._session is not None:
            self._session.clock.unsubscribe(self._end_capture)
            self._session.clock.unsubscribe(self._start_next_capture)
        self._subscribed = False
        while self._patches:
            owner, name, original = self._patches.pop()
            setattr(owner, name, original)
        self._session = None

    def _hook(self, torch: Any) -> None:
        if self._session is None or self._subscribed:
            return
        # A CPU build, or no device: nothing to capture, and nothing must be touched. device_count()
        # asks NVML first, so it neither initialises CUDA nor poisons a later fork.
        if getattr(torch.version, "cuda", None) is None or not _quiet(torch.cuda.device_count):
            return
        self._torch = torch
        # The capture of step k ends before the step digests launch their reductions, and the
        # capture of step k + 1 starts after them, so detrun's own kernels are never captured.
        self._session.clock.subscribe("kernels", self._end_capture, "the CUDA kernel capture")
        self._session.clock.subscribe("profiler", self._start_next_capture, "the CUDA kernel capture")
        self._subscribed = True
        self._yield_to_user_profiler(torch)
        # Mirrors torch.cuda._lazy_call (torch 1.x-2.x): run once CUDA is initialised (now, if it is).
        lazy_call = getattr(torch.cuda, "_lazy_call", None)
        if lazy_call is not None:
            lazy_call(self._start_first)

    def _yield_to_user_profiler(self, torch: Any) -> None:
        """Make the script's own profiler stop ours first, instead of failing because ours is on."""
        module = getattr(getattr(torch, "autograd", None), "profiler", None)
        for name in ("_prepare_profiler", "_enable_profiler"):
            original = getattr(module, name, None)
            if original is None:
                continue

            # Mirrors torch.autograd.profiler._prepare_profiler / _enable_profiler (torch 2.x), the
            # module globals every profiler context manager calls through.
            def yielding(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                if self._profiler is not None and not self._own_start:
                    self._abandon("the script started its own profiler")
                return _original(*args, **kwargs)

            self._patches.append((module, name, original))
            setattr(module, name, yielding)

    # The one place that touches torch's profiler module (tests replace it).

    def _new_profiler(self) -> Any:
        from torch.profiler import ProfilerActivity, profile

        return profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=False,
                       with_stack=False, profile_memory=False)

    # ------------------------------------------------------------ windows

    def _start_first(self) -> None:
        try:
            if self._session is not None and self._session.steps == 0 and self._profiler is None:
                if threading.current_thread() is not threading.main_thread():
                    # A profiler must be stopped on the thread that started it, and the optimizer
                    # steps that stop it run on the main thread (a pin-memory thread can start CUDA).
                    self._profiler, self._abandoned = _Placeholder(), "CUDA was initialised outside the main thread"
                    return
                self._start()
        except Exception as exc:  # noqa: BLE001 - this runs inside torch.cuda's lazy init: never raise
            self._failed(exc)

    def _start(self) -> None:
        torch = self._torch
        if _quiet(lambda: torch.autograd._profiler_enabled()):
            self._abandoned = "another profiler was running"
            self._profiler = _Placeholder()
            return
        profiler = self._new_profiler()
        self._own_start = True
        try:
            without_kineto_log(profiler.start)
        finally:
            self._own_start = False
        self._profiler = profiler
        self._abandoned = None

    def _stop(self, keep: bool = True) -> list[tuple[str, str]] | None:
        """End the capture in progress; return its launches (None if there was none or it was abandoned)."""
        profiler, self._profiler = self._profiler, None
        if profiler is None or isinstance(profiler, _Placeholder):
            return None
        try:
            synchronize = getattr(getattr(self._torch, "cuda", None), "synchronize", None)
            if synchronize is not None and keep:
                synchronize()  # every kernel of the step is in, and the log capture below stays short
            without_kineto_log(profiler.stop)
        except Exception as exc:  # noqa: BLE001
            if keep:
                self._failed(exc)
            return None
        if not keep:
            return None
        torch = self._torch
        device = torch.autograd.DeviceType
        return kernel_launches(profiler.events(), device.CPU, device.CUDA)

    def _abandon(self, reason: str) -> None:
        try:
            self._stop(keep=False)
        finally:
            self._profiler = _Placeholder()
            self._abandoned = reason

    def _end_capture(self, tick: Tick) -> None:
        """End the capture of the step that just finished, and record or compare its kernels."""
        if self._session is None or tick.step > self._wanted:
            return
        try:
            if self._profiler is not None:
                reason = self._abandoned
                launches = self._stop()
                self._emit(tick.step, launches, reason or "the capture failed")
            # else torch had not started CUDA when the step began: a CPU step, nothing to capture.
        except Exception as exc:  # noqa: BLE001 - never change what the program does
            self._failed(exc)

    def _start_next_capture(self, tick: Tick) -> None:
        """Start capturing the next step, if it is among the first K and CUDA is up."""
        if self._session is None or tick.step >= self._wanted:
            return
        try:
            if _quiet(self._torch.cuda.is_initialized):
                self._start()
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)

    def _emit(self, step: int, launches: list[tuple[str, str]] | None, reason: str) -> None:
        session = self._session
        if session.recording:
            session.emit(KIND, encode_step(self._table, step, launches) if launches is not None
                         else skipped_step(step, reason))
            return
        if launches is not None:
            self._captured += 1
        recorded = self._recorded.get(step)
        if recorded is None or recorded.skipped is not None or launches is None:
            return  # one side has nothing to compare
        got = StepKernels(step, [k for k, _ in launches[:MAX_LAUNCHES]], [o for _, o in launches[:MAX_LAUNCHES]])
        message = describe_difference(recorded, got)
        if message is not None:
            if _quiet(lambda: self._torch.backends.cudnn.benchmark is True):
                session.note_cause("torch.backends.cudnn.benchmark is on: cuDNN's autotuning can pick other "
                                   "kernels from run to run")
            session.mismatch(KIND, message, step=step)

    def _finish(self) -> None:
        session = self._session
        if session is None:
            return
        self._stop(keep=False)  # a step that never ended is not compared
        if session.recording:
            return
        # The steps were compared by number as they ended; account for the events here.
        from detrun.engine.session import MISSING

        while session.take(KIND) is not MISSING:
            pass
        captured = [s.step for s in self._recorded.values() if s.skipped is None]
        cuda_used = self._torch is not None and _quiet(self._torch.cuda.is_initialized)
        if captured and self._captured == 0 and not cuda_used and session.trace is not None and session.trace.complete:
            session.mismatch(KIND, f"the recording launched CUDA kernels in step(s) {', '.join(map(str, captured))}, "
                                  "but this replay used no CUDA device")

    def _failed(self, exc: BaseException) -> None:
        self._profiler = None
        if self._session is not None:
            self._session.hook_failed("the CUDA kernel capture", exc)


# libkineto logs `USDT:2026-01-01 12:00:00 123:123 SyncActivityProfilerHandler.cpp:52] profiler_start`
# (and STAGE/INFO/WARNING lines) straight to file descriptor 2, whatever KINETO_LOG_LEVEL says.
_KINETO_LINE = re.compile(rb"^[A-Z]+:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \d+:\d+ [\w.]+\.(?:cpp|h):\d+\] ")


def without_kineto_log(call: Callable[[], Any]) -> Any:
    """Run `call` with descriptor 2 captured, then pass on everything but libkineto's own log lines.

    The script's stderr is its own: the profiler detrun starts must not write to it. Nothing is lost,
    only held back for the duration of the call. memfd_create, not tempfile, because tempfile's names
    come from a `random.Random()` the script's recording would see.
    """
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None:
        return call()
    try:
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - whatever the script made of sys.stderr
        pass
    try:
        capture = memfd_create("detrun-kineto-log")
        saved = os.dup(2)
    except (OSError, ValueError):
        return call()
    os.dup2(capture, 2)
    try:
        return call()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        try:
            os.lseek(capture, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(capture, 1 << 16):
                chunks.append(chunk)
            kept = [line for line in b"".join(chunks).splitlines(keepends=True) if not _KINETO_LINE.match(line)]
            if kept:
                os.write(2, b"".join(kept))
        finally:
            os.close(capture)


class _Placeholder:
    """Stands for a capture that was abandoned or never started, so the step is recorded as skipped."""


def _quiet(function: Any) -> Any:
    try:
        return function()
    except Exception:  # noqa: BLE001 - a broken driver reads as no GPU
        return 0
