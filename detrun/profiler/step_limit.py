"""The profiler's step limit, shared by torch and TensorFlow: count steps on a step clock, stop cleanly at K."""
from __future__ import annotations

import threading
from typing import Callable

from detrun.engine.step_clock import StepClock, Tick


class StepLimitReached(SystemExit):
    """Raised from the step clock after K steps to end the script cleanly.

    A SystemExit subclass, so the user's `except Exception:` blocks do not swallow it, their
    `finally:` blocks still run, and the runner treats it as an exit rather than a crash.
    """

    def __init__(self) -> None:
        super().__init__(0)


class StepLimit:
    """Count training steps on a clock's `profiler` phase and end the script after `limit` (0: never)."""

    def __init__(self, clock: StepClock, limit: int, on_step: Callable[[], None] | None = None,
                 defer_off_main_thread: bool = False) -> None:
        self.limit = limit
        self.stopped = False
        self.pending = False
        self._clock = clock
        self._on_step = on_step
        # Keras' py_function steps tick on TensorFlow's threads, where raising would end only that
        # thread: the stop then waits for the capture's next hook on the main thread.
        self._defer = defer_off_main_thread
        clock.subscribe("profiler", self._after_step, "the profiler's step limit")

    @property
    def steps(self) -> int:
        """Return the number of training steps completed."""
        return self._clock.step

    def _after_step(self, tick: Tick) -> None:
        """Drop per-step bookkeeping, and stop at the limit."""
        if self._on_step is not None:
            try:
                self._on_step()
            except Exception:  # noqa: BLE001 - bookkeeping only
                pass
        if self.limit and tick.step >= self.limit:
            self.stopped = True
            if self._defer and threading.current_thread() is not threading.main_thread():
                self.pending = True
                return
            raise StepLimitReached()

    def stop_if_pending(self) -> None:
        """Raise a stop deferred from another thread, when called on the main thread."""
        if self.pending and threading.current_thread() is threading.main_thread():
            self.pending = False
            raise StepLimitReached()
