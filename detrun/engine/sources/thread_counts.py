"""Torch thread counts: the intra-op and inter-op pool sizes, and every call that changes them.

This module owns torch's thread counts. The thread environment variables (OMP_NUM_THREADS,
MKL_NUM_THREADS, ...) are pinned by the launcher before the interpreter starts, and TensorFlow's
pools belong to `tf_runtime`; what torch does with its own pools is handled here:

- at torch import, the pool sizes torch chose are recorded, and pinned on replay;
- every `torch.set_num_threads()` / `torch.set_num_interop_threads()` call is recorded with its
  optimizer step. Those calls are not pinned (the script's call runs as it would); a replay that
  ends up with other counts than the recording had at that point names them as the likely cause
  of a divergence, when the call is made, at the end of the step the recording made it in, or at
  the end of the run.

Events:
- `threads` — [intra_op, inter_op] at torch import;
- `threads.set` — [step, site, api, [intra_op, inter_op]] for each set_num_threads / set_num_interop_threads.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Callable

from detrun.engine.patcher import TorchStepSource
from detrun.engine.call_sites import call_site
from detrun.engine.step_clock import Tick
from detrun.env.torch_facts import when
from detrun.trace.registry import (  # the kinds, their payload schemas and versions
    THREADS_SET as SET_KIND,
    TORCH_THREADS as KIND,
)

if TYPE_CHECKING:
    from detrun.engine.session import Session


_SETTERS = (("set_num_threads", "torch.set_num_threads"),
            ("set_num_interop_threads", "torch.set_num_interop_threads"))


class ThreadsSource(TorchStepSource):
    """Record torch's pool sizes at import (pinned on replay) and every call that changes them."""

    def __init__(self) -> None:
        super().__init__()
        self._session: Session | None = None
        # replay: the counts the recording had at this point, and the next recorded call
        self._threads: list[int] | None = None
        self._next = 0

    # ------------------------------------------------------------ hooks (install and uninstall: TorchStepSource)

    def _hook(self, torch: Any) -> None:
        session = self._session
        if session is None or self._patcher.active:
            return
        self._torch = torch
        self._torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
        # Pinned before the setters are hooked: detrun's own pinning is not the script's call.
        self._pin_at_import(session, torch)
        if not session.recording:
            recorded = session.recorded(KIND)
            self._threads = list(recorded[0]) if recorded and isinstance(recorded[0], list) else self._counts()
        for name, api in _SETTERS:
            original = getattr(torch, name, None)
            if original is not None:
                self._patcher.setattr(torch, name, self._wrap(original, api))
        if not session.recording:  # a recording has nothing to do at a step
            self._subscribe("the thread count step hook")

    def _pin_at_import(self, session: Session, torch: Any) -> None:
        """Record the pool sizes torch chose; on replay set the recorded ones."""
        observed = self._counts()
        if session.recording:
            session.emit(KIND, observed)
            return
        recorded = session.take(KIND)
        if not isinstance(recorded, list) or recorded == observed:
            return
        intra, interop = recorded
        if not session.settings.get("pin_threads", True):
            # Pinning is off: run with this machine's counts, and name them if the replay diverges.
            for label, old, new in zip(("intra-op", "inter-op"), recorded, observed):
                if old != new:
                    session.note_cause(f"torch {label} threads: recorded {old}, now {new} (not pinned)", likely=True)
            return
        torch.set_num_threads(intra)
        try:
            torch.set_num_interop_threads(interop)
        except RuntimeError:
            # Only settable before the first inter-op parallel work; say so rather than pretend.
            session.mismatch(KIND, f"torch inter-op threads recorded {interop}, got {observed[1]} "
                                  "and could not be pinned")

    def _wrap(self, original: Callable[..., Any], api: str) -> Callable[..., Any]:
        source = self

        # Mirrors torch.set_num_threads / set_num_interop_threads (torch 2.x); the latter raises
        # once inter-op work has started, and then nothing changed and nothing is recorded.
        def hooked(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            session = source._session
            if session is not None:
                try:
                    source._on_set(api)
                except Exception as exc:  # noqa: BLE001 - never change what the program does
                    session.hook_failed(f"the {api} hook", exc)
            return result

        hooked.__name__ = getattr(original, "__name__", api)
        hooked.__doc__ = getattr(original, "__doc__", None)
        return hooked

    # ------------------------------------------------------------ the script's calls

    def _counts(self) -> list[int]:
        """Return torch's [intra-op, inter-op] thread counts now."""
        torch = self._torch
        return [torch.get_num_threads(), torch.get_num_interop_threads()]

    def _on_set(self, api: str) -> None:
        """Record a set_num_threads call with its step; on replay, name counts that differ."""
        session = self._session
        now = self._counts()
        step, site = session.steps, self._site()
        if session.recording:
            session.emit(SET_KIND, [step, site, api, now])
            return
        self._overdue(step, "the replay did not")
        recorded = self._peek()
        how = f"set by {api} at {site} {when(step)}"
        if recorded is None:
            self._note(now, f"{how}, a call the recording does not have")
            return
        self._take(recorded)
        if recorded[0] != step and recorded[3] == now:
            session.note_cause(f"torch threads set {when(step)} ({site}), the recording set them "
                               f"{when(recorded[0])} ({recorded[1]})", likely=True)
        self._note(now, how)

    def _peek(self) -> list[Any] | None:
        """Return the next well-formed recorded call (malformed ones are skipped), or None."""
        queue = self._session.recorded(SET_KIND)
        while self._next < len(queue):
            recorded = queue[self._next]
            if isinstance(recorded, list) and len(recorded) == 4 and isinstance(recorded[3], list):
                return recorded
            self._take(None)
        return None

    def _take(self, recorded: list[Any] | None) -> None:
        """Consume the next recorded call; its counts are what the recording had from then on."""
        self._next += 1
        self._session.take(SET_KIND)
        if recorded is not None:
            self._threads = list(recorded[3])

    def _overdue(self, steps_done: int, what: str) -> None:
        """Account for recorded calls whose step is over; name any count that now differs."""
        while (recorded := self._peek()) is not None and recorded[0] < steps_done:
            self._take(recorded)
            self._note(self._counts(), f"the recording set them with {recorded[2]} at {recorded[1]} "
                                       f"{when(recorded[0])}; {what}")

    def _note(self, now: list[int], how: str) -> None:
        """Name each count that differs from the recording's as a likely cause."""
        if self._threads is None:
            return
        for label, recorded, current in zip(("intra-op", "inter-op"), self._threads, now):
            if recorded != current:
                self._session.note_cause(f"torch {label} threads: recorded {recorded}, now {current} ({how})",
                                         likely=True)

    # ------------------------------------------------------------ step boundaries and the end

    def _on_tick(self, tick: Tick) -> None:
        """At the end of each step (the clock's flags phase): account for recorded calls whose step is over."""
        session = self._session
        if session is None or session.recording:
            return
        self._overdue(tick.step, "the replay did not")
        if self._next >= len(session.recorded(SET_KIND)):
            # Every recorded call is accounted for: later calls are checked as they are made.
            session.clock.unsubscribe(self._on_tick)
            self._subscribed = False

    def _finish(self) -> None:
        """At the end of a complete replay: account for the recorded calls the replay never made."""
        session = self._session
        if session is None or session.recording or session.trace is None or not session.trace.complete:
            return
        self._overdue(sys.maxsize, "the replay never did")

    def _site(self) -> str:
        """Return `file:line` of the script's line that made the call (torch's own frames skipped)."""
        return call_site(self._torch_dir)
