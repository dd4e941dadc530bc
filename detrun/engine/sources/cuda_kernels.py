"""The CUDA kernels of the first K optimizer steps: recorded, and compared on replay.

For each of the first `kernel_steps` optimizer steps (a session setting, default 2) the names of
the CUDA kernels launched, and the op that launched each, are captured with torch.profiler (CPU
and CUDA activity) and stored as one event per step:

    `kernels` — {"step": k, "strings": [new names], "kernels": ids, "ops": ids}
                or {"step": k, "skipped": reason}

Names go into a string table that grows across the events (each event carries only the names not
seen before), so a step costs about a byte or two per launch. Ids are packed by
`detrun.trace.format.pack_indices` as [width, bytes] where that exists, as plain lists otherwise.

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

import dataclasses
import os
import re
import sys
import threading
from typing import Any, Callable, Iterable, Sequence

from detrun.engine.step_clock import Tick
from detrun.trace.registry import KERNELS as KIND  # the kind, its payload schema and version

DEFAULT_STEPS = 2
MAX_LAUNCHES = 200_000  # per step; beyond this the list is cut (and says so)
_NOT_KERNELS = ("Memcpy", "Memset")
_SHOWN = 140  # characters of a (templated) kernel name in a message


# ------------------------------------------------------------------------------ pure parts


class StringTable:
    """Map strings to small ids, handing out only the strings each encoding adds."""

    def __init__(self) -> None:
        self.strings: list[str] = []
        self._ids: dict[str, int] = {}

    def encode(self, names: Iterable[str]) -> tuple[list[str], list[int]]:
        """Return (strings new to the table, the id of each name)."""
        new: list[str] = []
        ids: list[int] = []
        for name in names:
            index = self._ids.get(name)
            if index is None:
                index = self._ids[name] = len(self.strings)
                self.strings.append(name)
                new.append(name)
            ids.append(index)
        return new, ids

    def extend(self, new: Iterable[str]) -> None:
        """Add the strings an encoded event brought (decoder side)."""
        for name in new:
            self._ids.setdefault(name, len(self.strings))
            self.strings.append(name)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Return the strings for ids ('?' for an id the table does not have)."""
        return [self.strings[i] if 0 <= i < len(self.strings) else "?" for i in ids]


@dataclasses.dataclass
class StepKernels:
    """The kernels one optimizer step launched, in launch order, with the op behind each."""

    step: int
    kernels: list[str]
    ops: list[str]
    skipped: str | None = None
    truncated: int = 0


def _pack(ids: list[int]) -> Any:
    try:
        from detrun.trace.format import pack_indices
    except ImportError:  # an older trace module: plain lists are just as readable
        return ids
    width, data = pack_indices(ids)
    return [width, data]


def _unpack(packed: Any) -> list[int]:
    if isinstance(packed, list) and len(packed) == 2 and isinstance(packed[1], (bytes, bytearray)):
        from detrun.trace.format import unpack_indices

        return unpack_indices(int(packed[0]), bytes(packed[1]))
    return [int(i) for i in packed or []]


def encode_step(table: StringTable, step: int, launches: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Return the event payload for one step's (kernel, op) launches."""
    truncated = max(0, len(launches) - MAX_LAUNCHES)
    launches = launches[:MAX_LAUNCHES]
    new, ids = table.encode([k for k, _ in launches] + [o for _, o in launches])
    payload: dict[str, Any] = {"step": step, "strings": new, "kernels": _pack(ids[:len(launches)]),
                               "ops": _pack(ids[len(launches):])}
    if truncated:
        payload["truncated"] = truncated
    return payload


def skipped_step(step: int, reason: str) -> dict[str, Any]:
    """Return the event payload for a step that could not be captured."""
    return {"step": step, "skipped": reason}


def decode_steps(payloads: Iterable[Any]) -> list[StepKernels]:
    """Return the recorded steps of a trace's kernel events, in order."""
    table = StringTable()
    steps = []
    for payload in payloads:
        if not isinstance(payload, dict):
            continue
        step = int(payload.get("step", 0))
        if payload.get("skipped") is not None:
            steps.append(StepKernels(step, [], [], skipped=str(payload["skipped"])))
            continue
        table.extend(payload.get("strings", []))
        steps.append(StepKernels(step, table.decode(_unpack(payload.get("kernels"))),
                                 table.decode(_unpack(payload.get("ops"))), truncated=int(payload.get("truncated", 0))))
    return steps


def first_difference(recorded: Sequence[str], got: Sequence[str]) -> int | None:
    """Return the index of the first differing element (or where the shorter one ends); None if equal."""
    for index, (a, b) in enumerate(zip(recorded, got)):
        if a != b:
            return index
    return None if len(recorded) == len(got) else min(len(recorded), len(got))


def _short(name: str) -> str:
    return name if len(name) <= _SHOWN else name[:_SHOWN - 1] + "…"


def describe_difference(recorded: StepKernels, got: StepKernels) -> str | None:
    """Return the divergence message for two captures of one step, or None if they match."""
    index = first_difference(recorded.kernels, got.kernels)
    if index is None:
        return None
    step = got.step
    if index < len(recorded.kernels) and index < len(got.kernels):
        return (f"CUDA kernel #{index + 1} of step {step} is '{_short(got.kernels[index])}' (launched by "
                f"{got.ops[index]}), but the recording has '{_short(recorded.kernels[index])}' (launched by "
                f"{recorded.ops[index]})")
    if index < len(recorded.kernels):
        return (f"step {step} launched {len(got.kernels)} CUDA kernels, the recording {len(recorded.kernels)}; the "
                f"first missing is '{_short(recorded.kernels[index])}' (launched by {recorded.ops[index]})")
    return (f"step {step} launched {len(got.kernels)} CUDA kernels, the recording {len(recorded.kernels)}; the "
            f"first extra is '{_short(got.kernels[index])}' (launched by {got.ops[index]})")


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
            if not getattr(event, "linked_correlation_id", 0):
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
        self._session: Any = None
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

    def install(self, session: Any) -> None:
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
            session.diverge(KIND, message, step=step)

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
            session.diverge(KIND, f"the recording launched CUDA kernels in step(s) {', '.join(map(str, captured))}, "
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
