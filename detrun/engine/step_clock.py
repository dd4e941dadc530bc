"""The step clock: the one training-step counter, and the only optimizer hook detrun registers.

Torch's global optimizer post-hook and the TensorFlow/Keras step hooks both tick this clock. A tick
advances the step first, then calls the subscribers phase by phase, in the order of PHASES, so that
every subscriber sees the same step number and none depends on installation order:

- ``flags``: backend flags and thread counts recorded for this step are applied or checked;
- ``kernels``: the CUDA kernel capture of this step ends (before detrun launches kernels of its own);
- ``digests``: the parameter and loss digests of this step are recorded or compared;
- ``profiler``: captures for the next step start (after the digests' reductions were launched),
  and `detrun profile` counts the step and may stop the run.

After the phases, the owner's housekeeping (flush the trace, refresh the progress line) runs.
A subscriber that raises an ordinary exception is reported to the owner and the rest still run:
the user's program never sees detrun's failure. A BaseException that is not an Exception (the
profiler's step limit) propagates on purpose.

The clock also owns the one wrapper of `torch.autograd.backward`: it counts the calls, keeps the
tensor the latest one ran on (`loss`, the digests' per-step loss, until the next tick), and calls
the sources that asked to see backward() calls (`on_backward`) before and after it; a source that
only needs the position reads `step`, `backward_calls` and `last_event`.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, NamedTuple, Protocol

PHASES = ("flags", "kernels", "digests", "profiler")
START, STEP, BACKWARD = 0, 1, 2  # `last_event`: nothing yet, an optimizer step, a backward() call


class Removable(Protocol):
    """A hook handle, such as torch.utils.hooks.RemovableHandle."""

    def remove(self) -> None:
        """Unregister the hook."""


class Tick(NamedTuple):
    """One completed training step, as every subscriber sees it (a tuple: made every step, cheaply)."""

    step: int  # 1-based: the number of steps completed, this one included
    optimizer: object | None  # the torch optimizer, or the TensorFlow/Keras object that stepped
    framework: str  # "torch" or "tensorflow"


# Tick(...) runs the Python __new__ that NamedTuple generates; tuple.__new__ makes the same tuple in C.
_new_tick = tuple.__new__
TickCallback = Callable[[Tick], None]
BeforeBackward = Callable[[object], None]  # called with the tensors backward() is about to run on
AfterBackward = Callable[[], None]
FRAMEWORKS = ("torch", "tensorflow")


class StepClock:
    """Count training steps and call the subscribers of each phase in declared order."""

    def __init__(self, on_error: Callable[[str, BaseException], None],
                 after_tick: Callable[[], None] | None = None) -> None:
        self.step = 0
        # Per phase: (what, callback, the framework whose ticks it wants, or None for every tick).
        self._subscribers: dict[str, list[tuple[str, TickCallback, str | None]]] = {phase: [] for phase in PHASES}
        self._ordered: dict[str, tuple[tuple[str, TickCallback], ...]] = {name: () for name in FRAMEWORKS}
        self._on_error = on_error
        self._after_tick = after_tick
        self._torch_handle: Removable | None = None
        self.backward_calls = 0  # torch.autograd.backward() calls that returned
        self.last_event = START
        self.loss: object | None = None  # what the latest backward() since the last tick ran on
        # (what, callback): tuples, replaced on change, so that the wrapper reads them without a lock.
        self._before_backward: tuple[tuple[str, BeforeBackward], ...] = ()
        self._after_backward: tuple[tuple[str, AfterBackward], ...] = ()
        self._patched_backward: tuple[object, Callable[..., object]] | None = None
        # Keras' py_function steps run on TensorFlow's threads; a tick is atomic.
        self._lock = threading.RLock()

    def subscribe(self, phase: str, callback: TickCallback, what: str, framework: str | None = None) -> None:
        """Call `callback(tick)` in `phase` of every tick, or of `framework`'s; `what` names it in failure reports."""
        if phase not in self._subscribers:
            raise ValueError(f"unknown step phase {phase!r}; phases are {', '.join(PHASES)}")
        if framework is not None and framework not in FRAMEWORKS:
            raise ValueError(f"unknown framework {framework!r}; frameworks are {', '.join(FRAMEWORKS)}")
        self._subscribers[phase].append((what, callback, framework))
        self._ordered = self._in_phase_order()

    def unsubscribe(self, callback: TickCallback) -> None:
        """Stop calling `callback` (no-op when it is not subscribed)."""
        for phase, entries in self._subscribers.items():
            # `!=`, not `is not`: a bound method is a new object at each attribute access, equal to the others.
            self._subscribers[phase] = [entry for entry in entries if entry[1] != callback]
        self._ordered = self._in_phase_order()

    def _in_phase_order(self) -> dict[str, tuple[tuple[str, TickCallback], ...]]:
        # Built when the subscribers change, not at every tick, and per framework, so that a torch
        # step does not call the TensorFlow digest only for it to return; tuples, so that a callback
        # that unsubscribes during a tick does not disturb the tick in progress.
        return {name: tuple((what, callback) for phase in PHASES for what, callback, wanted in self._subscribers[phase]
                            if wanted is None or wanted == name)
                for name in FRAMEWORKS}

    def tick(self, optimizer: object | None = None, framework: str = "torch") -> Tick:
        """Advance by one step and run every phase; return the tick."""
        with self._lock:
            self.step += 1
            tick = _new_tick(Tick, (self.step, optimizer, framework))
            for what, callback in self._ordered[framework]:
                try:
                    callback(tick)
                except Exception as exc:  # noqa: BLE001 - never change what the user's program does
                    self._on_error(what, exc)
            self.last_event = STEP
            self.loss = None
            if self._after_tick is not None:
                self._after_tick()
            return tick

    # ------------------------------------------------------------ backward() calls

    def on_backward(self, what: str, before: BeforeBackward | None = None,
                    after: AfterBackward | None = None) -> None:
        """Call `before(tensors)` before each torch.autograd.backward() call and `after()` after it."""
        if before is not None:
            self._before_backward = (*self._before_backward, (what, before))
        if after is not None:
            self._after_backward = (*self._after_backward, (what, after))

    def off_backward(self, callback: Callable[..., None]) -> None:
        """Stop calling `callback` at backward() calls (no-op when it is not registered)."""
        self._before_backward = tuple(entry for entry in self._before_backward if entry[1] != callback)
        self._after_backward = tuple(entry for entry in self._after_backward if entry[1] != callback)

    def _wrap_backward(self, autograd: Any) -> None:
        original = autograd.backward
        clock = self

        # Tensor.backward() calls torch.autograd.backward through the module attribute, so this one
        # wrapper sees both spellings. Mirrors torch.autograd.backward (torch 2.x). A callback's
        # ordinary exception is reported, never raised; a KeyboardInterrupt that a replay delivers
        # on purpose (engine/sources/interrupts.py) goes through.
        def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            clock.loss = tensors
            for what, before in clock._before_backward:
                try:
                    before(tensors)
                except Exception as exc:  # noqa: BLE001 - never change what the user's program does
                    clock._on_error(what, exc)
            result = original(tensors, *args, **kwargs)
            clock.backward_calls += 1
            clock.last_event = BACKWARD
            for what, after in clock._after_backward:
                try:
                    after()
                except Exception as exc:  # noqa: BLE001
                    clock._on_error(what, exc)
            return result

        backward.__doc__ = original.__doc__
        autograd.backward = backward
        self._patched_backward = (autograd, original)

    # ------------------------------------------------------------ torch

    def attach_torch(self, torch: Any) -> None:
        """Register the clock as torch's global optimizer post-hook and wrap torch.autograd.backward (once)."""
        if self._torch_handle is not None:
            return
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._torch_handle = register_optimizer_step_post_hook(self._torch_post_hook)
        self._wrap_backward(torch.autograd)

    def detach_torch(self) -> None:
        """Remove the optimizer post-hook and the backward() wrapper, if installed."""
        if self._torch_handle is not None:
            self._torch_handle.remove()
            self._torch_handle = None
        if self._patched_backward is not None:
            autograd, original = self._patched_backward
            autograd.backward = original  # type: ignore[attr-defined]
            self._patched_backward = None
        self.loss = None

    def _torch_post_hook(self, optimizer: object, args: object, kwargs: object) -> None:
        self.tick(optimizer)  # "torch": the default, so that this call passes one argument
