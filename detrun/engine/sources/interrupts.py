"""Interrupts: a Ctrl-C or SIGTERM the script caught, recorded with where it arrived and delivered there again.

A script that catches KeyboardInterrupt and ends early (pytorch's word_language_model does) must
end at the same place on replay, or the replay trains past the recorded end. The arrival point is
the number of optimizer steps completed, of backward() calls made, and which of the two came last.
A Ctrl-C lands at a random moment, most likely inside a forward or backward pass, so the replay
sends the same signal to itself at the latest point with the same training state: right before the
next backward() after an optimizer step (log lines printed after `optimizer.step()` are printed
again), or right after the backward() it followed. Whatever handler the script has installed by
then reacts as it did. Random draws made inside the interrupted step cannot be placed exactly, so
after a delivered interrupt the final RNG states are not compared (the weights still are).

    `signal` — [steps, backward_calls, signum, last_event]   (last_event: 0 start, 1 step, 2 backward)
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from detrun.engine.patcher import Patcher
from detrun.engine.step_clock import BACKWARD, START, STEP, Tick
from detrun.trace.registry import SIGNAL as KIND  # the kind, its payload schema and version

if TYPE_CHECKING:
    from detrun.engine.session import Session

WATCHED = (signal.SIGINT, signal.SIGTERM)


class InterruptSource:
    """Record where a caught SIGINT/SIGTERM arrived; deliver it at the same place on replay."""

    def __init__(self) -> None:
        self._patcher = Patcher()
        self._session: Session | None = None
        self._pending: list[Any] = []  # replay: recorded arrivals not yet delivered
        self._handlers_installed: list[tuple[int, Any]] = []
        self._watching_steps = False

    def install(self, session: Session) -> None:
        if self._session is not None or threading.current_thread() is not threading.main_thread():
            return
        self._session = session
        if session.recording:
            self._watch_signals()  # a signal notes the clock's position: nothing to do at each step
            return
        # Only the watched signals, at plain integer positions: a trace never makes detrun send anything else.
        self._pending = [p for p in session.recorded(KIND) if isinstance(p, list) and len(p) == 4
                         and all(type(v) is int for v in p) and p[2] in WATCHED]
        if self._pending:
            session.clock.subscribe("profiler", self._on_tick, "the interrupt hook")
            session.clock.on_backward("the interrupt hook", before=self._before_backward, after=self._after_backward)
            self._watching_steps = True

    def uninstall(self) -> None:
        self._patcher.undo()
        for signum, previous in reversed(self._handlers_installed):
            try:
                if signal.getsignal(signum) is not previous:
                    signal.signal(signum, previous)
            except (ValueError, OSError):
                pass
        self._handlers_installed.clear()
        if self._session is not None and self._watching_steps:
            self._session.clock.unsubscribe(self._on_tick)
            self._session.clock.off_backward(self._before_backward)
            self._session.clock.off_backward(self._after_backward)
        self._watching_steps = False
        self._session = None

    # ------------------------------------------------------------ record

    def _watch_signals(self) -> None:
        """Note every watched signal's arrival before the script's handler (or Python's default) runs it."""
        original_signal = signal.signal
        source = self

        def recording(handler: Any) -> Any:
            if not callable(handler):
                return handler  # SIG_IGN / SIG_DFL: nothing runs in Python, so nothing to note

            def noted(signum: int, frame: Any) -> Any:
                source._arrived(signum)
                return handler(signum, frame)

            noted.__wrapped__ = handler  # type: ignore[attr-defined]
            return noted

        # Mirrors signal.signal(signalnum, handler) (CPython 3.10-3.13); getsignal() still returns
        # the script's own handler, as it would without detrun.
        def hooked_signal(signalnum: int, handler: Any) -> Any:
            previous = original_signal(signalnum, recording(handler) if signalnum in WATCHED else handler)
            return getattr(previous, "__wrapped__", previous)

        original_getsignal = signal.getsignal

        def hooked_getsignal(signalnum: int) -> Any:
            current = original_getsignal(signalnum)
            return getattr(current, "__wrapped__", current)

        hooked_signal.__doc__ = original_signal.__doc__
        hooked_getsignal.__doc__ = original_getsignal.__doc__
        for signum in WATCHED:
            current = original_getsignal(signum)
            if callable(current):
                self._handlers_installed.append((signum, current))
                original_signal(signum, recording(current))
        self._patcher.setattr(signal, "signal", hooked_signal)
        self._patcher.setattr(signal, "getsignal", hooked_getsignal)

    def _arrived(self, signum: int) -> None:
        session = self._session
        if session is None:
            return
        try:
            clock = session.clock
            session.emit(KIND, [clock.step, clock.backward_calls, int(signum), clock.last_event])
            if session.writer is not None:
                session.writer.flush()  # the handler may end the run at once
        except Exception as exc:  # noqa: BLE001 - never change what the program does
            session.hook_failed("the signal hook", exc)

    # ------------------------------------------------------------ replay

    def _before_backward(self, tensors: object) -> None:
        if self._pending:
            self._maybe_deliver(START)  # before this call: right after a step, or at the start

    def _after_backward(self) -> None:
        if self._pending:
            self._maybe_deliver(BACKWARD)

    def _on_tick(self, tick: Tick) -> None:
        if self._pending:
            self._maybe_deliver(STEP)

    def _maybe_deliver(self, event: int) -> None:
        """Send the next recorded signal if the run is right after the event it arrived after (or past it)."""
        session = self._session
        if session is None or threading.current_thread() is not threading.main_thread():
            return
        steps, calls, signum, last_event = self._pending[0]
        here = (session.steps, session.clock.backward_calls)
        # STEP/START arrivals are delivered just before the next backward(), BACKWARD ones just after
        # theirs; a run already past the point (no backward came) gets it at the next step.
        wanted = BACKWARD if last_event == BACKWARD else START
        due = here == (steps, calls) and event == wanted or here > (steps, calls)
        if not due:
            return
        session.interrupt_delivered = True
        self._pending.pop(0)
        session.take(KIND)
        if not session.quiet:
            print(f"detrun: delivering the recorded {signal.Signals(signum).name} after step {steps}",
                  file=sys.stderr)
        os.kill(os.getpid(), signum)  # the script's handler (or KeyboardInterrupt) runs at the next bytecode
