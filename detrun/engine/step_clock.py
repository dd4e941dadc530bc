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
"""
from __future__ import annotations

import threading
from typing import Callable, NamedTuple, Protocol

PHASES = ("flags", "kernels", "digests", "profiler")


class Removable(Protocol):
    """A hook handle, such as torch.utils.hooks.RemovableHandle."""

    def remove(self) -> None:
        """Unregister the hook."""


class Tick(NamedTuple):
    """One completed training step, as every subscriber sees it (a tuple: made every step, cheaply)."""

    step: int  # 1-based: the number of steps completed, this one included
    optimizer: object | None  # the torch optimizer, or the TensorFlow/Keras object that stepped
    framework: str  # "torch" or "tensorflow"


TickCallback = Callable[[Tick], None]
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
        # Keras' py_function steps run on TensorFlow's threads; a tick is atomic.
        self._lock = threading.RLock()

    def subscribe(self, phase: str, callback: TickCallback, what: str, framework: str | None = None) -> None:
        """Call `callback(tick)` in `phase` of every tick (of `framework`'s only, if given); `what` names it in failure reports."""
        if phase not in self._subscribers:
            raise ValueError(f"unknown step phase {phase!r}; phases are {', '.join(PHASES)}")
        if framework is not None and framework not in FRAMEWORKS:
            raise ValueError(f"unknown framework {framework!r}; frameworks are {', '.join(FRAMEWORKS)}")
        self._subscribers[phase].append((what, callback, framework))
        self._ordered = self._in_phase_order()

    def unsubscribe(self, callback: TickCallback) -> None:
        """Stop calling `callback` (no-op when it is not subscribed)."""
        for phase, entries in self._subscribers.items():
            self._subscribers[phase] = [entry for entry in entries if entry[1] is not callback]
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
            tick = Tick(self.step, optimizer, framework)
            for what, callback in self._ordered[framework]:
                try:
                    callback(tick)
                except Exception as exc:  # noqa: BLE001 - never change what the user's program does
                    self._on_error(what, exc)
            if self._after_tick is not None:
                self._after_tick()
            return tick

    # ------------------------------------------------------------ torch

    def attach_torch(self, torch: object) -> None:
        """Register the clock as torch's global optimizer post-hook (once)."""
        if self._torch_handle is not None:
            return
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._torch_handle = register_optimizer_step_post_hook(self._torch_post_hook)

    def detach_torch(self) -> None:
        """Remove the optimizer post-hook, if registered."""
        if self._torch_handle is not None:
            self._torch_handle.remove()
            self._torch_handle = None

    def _torch_post_hook(self, optimizer: object, args: object, kwargs: object) -> None:
        self.tick(optimizer, "torch")
