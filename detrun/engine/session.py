"""The session: the one meeting point of the sources, the trace and the verdict.

In record mode every source hands the session what it observed and the session appends it to the
trace. In replay mode the session holds the recorded events, one cursor per event kind, and feeds
them back; whenever the program asks for something the recording does not have, it notes a
divergence with the call site instead of silently accepting it.
"""
from __future__ import annotations

import os
import struct
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Sequence

from detrun.engine.call_sites import call_site
from detrun.engine.child_segments import ChildSegments
from detrun.engine.process_segments import ProcessSegments
from detrun.engine.import_watch import ImportWatcher, initialising
from detrun.engine.replay_end import ReplayEnd
from detrun.engine.step_clock import StepClock
from detrun.engine.verdict import Divergence, Verdict
from detrun.progress_line import ProgressPipe
from detrun.runner import Outcome
from detrun.trace import Trace, TraceWriter, registry
from detrun.trace.writer import CHUNK_SECONDS as FLUSH_SECONDS, publish

# Captured before any source patches os.urandom: detrun's own seeds must never appear as the
# program's entropy events.
_os_urandom = os.urandom


class _Missing:
    """Sentinel for an exhausted replay cursor."""


MISSING = _Missing()


class RecordingEnded(SystemExit):
    """Stop a replay where its incomplete recording ended; a SystemExit so `except Exception:` keeps out."""

    def __init__(self) -> None:
        super().__init__(0)


def format_bytes(n: int) -> str:
    """Return a byte count the way a person reads it."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


_active: Session | None = None
_fork_handler_registered = False


def active_session() -> Session | None:
    """Return the session whose hooks are installed in this process, if any."""
    return _active


def _detach_in_forked_child() -> None:
    """Drop the parent's hooks in a forked child: its events have nowhere safe to go.

    DataLoader workers then install a session of their own; other forked processes run as plain
    Python, unrecorded.
    """
    if _active is not None:
        _active.detach()


class Session(ChildSegments, ProcessSegments, ReplayEnd):
    """Record or replay one process's events and produce the verdict."""

    def __init__(
        self,
        mode: str,
        *,
        writer: TraceWriter | None = None,
        trace: Trace | None = None,
        settings: dict[str, Any] | None = None,
        strict: bool = False,
        quiet: bool = False,
        role: str = "main",
        verbose: bool = False,
        report_json: str | None = None,
        ignore_output: tuple[str, ...] = (),
        progress_fd: int | None = None,
    ) -> None:
        assert mode in ("record", "replay")
        self.mode = mode
        self.recording = mode == "record"
        self.writer = writer
        self.trace = trace
        self.settings = settings or {}
        self.strict = strict
        self.quiet = quiet
        self.verbose = verbose  # replay: list every divergence and cause, not only the first
        self.report_json = report_json  # replay: where the user asked for the machine-readable verdict
        self.ignore_output = ignore_output  # replay: the user's extra stdout masks (regular expressions)
        self.role = role
        # tempfile draws random names the first time it looks for its directory; look now, in record
        # and replay alike and before any hook, so that neither detrun nor the program shifts the
        # program's recorded `random` seeds by being first.
        tempfile.gettempdir()
        self.divergences: list[Divergence] = []  # state and output checks that differed: they decide the verdict
        self.mismatches: list[Divergence] = []  # event mismatches: causes, never the verdict by themselves
        self.hook_failures: list[str] = []
        self.unrecorded: list[str] = []  # processes running the script's code that no session records
        self.interrupt_delivered = False  # replay: a recorded Ctrl-C/SIGTERM was sent to the script
        # The one step counter: torch's optimizer post-hook and the TensorFlow step hooks tick it.
        self.clock = StepClock(self.hook_failed, after_tick=self.on_step)
        self.checked: dict[str, int] = {}  # checks made, by name: {"steps": 200, "final state": 1, "batches": 391}
        self.last_digest: int | None = None
        self._cursors: dict[str, int] = {}
        # Hooks fire from any thread (pin-memory threads, the user's own): one lock keeps the writer
        # and the cursors consistent; uncontended, it costs tens of nanoseconds.
        self._lock = threading.Lock()
        self._replayed = 0
        self._failed_hooks: set[str] = set()
        self._watcher = ImportWatcher(self.hook_failed)
        self._uninstallers: list[Callable[[], None]] = []
        # The progress line is drawn by the launcher, which sees every byte the script writes to the
        # terminal (detrun.progress_line); this process only sends it the text. No pipe: no line.
        self._progress = ProgressPipe(progress_fd) if progress_fd is not None and not quiet else None
        self._progress_due = 0.0
        self._on_stop: list[Callable[[], None]] = []
        self._on_flush: list[Callable[[], None]] = []
        self._flush_due = 0.0
        self._flushing = False
        # Replay: the last step of an incomplete recording, where the replay stops (read once, not at each step).
        recorded_end = trace.end if trace is not None and not trace.complete and trace.end is not None else None
        recorded_steps = recorded_end.get("steps") if recorded_end is not None else None
        self._incomplete_end_step = max(recorded_steps, 1) if isinstance(recorded_steps, int) else None
        # Differences that may explain a divergence (environment, pinned settings that could not
        # be pinned), most likely first; the verdict names the first one.
        self.causes: list[str] = []
        # Child processes (DataLoader workers) write trace segments, or in replay report files,
        # that the main session merges when it finishes.
        self.segment_paths: list[str] = []
        self.report_paths: list[str] = []
        # A launched command's ranks (engine.process_segments): the owner's merge results.
        self.missing_processes: list[str] = []
        self.incomplete_processes: list[str] = []
        self.process_summaries: dict[str, dict[str, int]] = {}
        # The real stdout while the stdout source tees fd 1 (ranks the script starts write there).
        self.unteed_stdout_fd: int | None = None
        # Ranks the script started itself (Lightning's DDP): waited for before their segments are merged.
        self.rank_processes: list[Any] = []

    # ----------------------------------------------------------------- shared services

    def fresh_seed(self, bits: int = 64) -> int:
        """Return a new random seed from OS entropy, invisible to the entropy source."""
        return int.from_bytes(_os_urandom((bits + 7) // 8), "little") >> (-bits % 8)

    def when_imported(self, module_name: str, callback: Callable[[Any], None]) -> None:
        """Call callback(module) once the module is imported (now, if it already is)."""
        module = sys.modules.get(module_name)
        if module is not None and getattr(module, "__spec__", None) is not None and not initialising(module):
            try:
                callback(module)
            except Exception as exc:  # noqa: BLE001
                self.hook_failed(f"setting up hooks for {module_name}", exc)
            return
        self._watcher.callbacks.setdefault(module_name, []).append(callback)
        if self._watcher not in sys.meta_path:
            sys.meta_path.insert(0, self._watcher)

    def on_uninstall(self, undo: Callable[[], None]) -> None:
        """Register an undo action; they run in reverse order at the end of the session."""
        self._uninstallers.append(undo)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Register work to finish before the verdict (flush batched step digests, say)."""
        self._on_stop.append(callback)

    def note_cause(self, cause: str, likely: bool = False) -> None:
        """Remember a difference that may explain a divergence; `likely` puts it first."""
        if cause not in self.causes:
            self.causes.insert(0, cause) if likely else self.causes.append(cause)

    def hook_failed(self, where: str, exc: BaseException) -> None:
        """Report an internal failure once on stderr; the user's program carries on unchanged."""
        if where in self._failed_hooks:
            return
        self._failed_hooks.add(where)
        self.hook_failures.append(f"{where}: {type(exc).__name__}: {exc}")
        self._clear_progress()
        print(f"detrun: warning: internal error in {where}: {type(exc).__name__}: {exc} "
              f"(the run continues; this source may not reproduce)", file=sys.stderr)

    def count_check(self, name: str, count: int = 1) -> None:
        """Count a state or output check that was made (whether or not it matched)."""
        with self._lock:
            self.checked[name] = self.checked.get(name, 0) + count

    def note_unrecorded(self, what: str) -> None:
        """Remember a process that runs the script's code without a session of its own."""
        if what not in self.unrecorded:
            self.unrecorded.append(what)

    # ----------------------------------------------------------------- events

    def emit(self, kind: str, payload: Any) -> None:
        """Append an event to the trace (record mode)."""
        assert self.writer is not None
        with self._lock:
            self.writer.event(kind, payload)

    def emit_all(self, kind: str, payloads: list[Any]) -> None:
        """Append events of one kind to the trace, in order (record mode; a batched source's flush)."""
        assert self.writer is not None
        with self._lock:
            self.writer.events(kind, payloads)

    def event_version(self, kind: str) -> int:
        """Return the payload version to write a kind's events in, or to compute them in to compare (replay)."""
        return self.trace.version(kind) if self.trace is not None else registry.current_version(kind)

    def recorded(self, kind: str) -> Sequence[Any]:
        """Return all recorded payloads of a kind for this process's role (replay mode).

        The payloads were checked against the kind's schema when the trace was read; the per-step
        kinds come as a lazy sequence that decodes them from the file as the cursor reaches them.
        """
        assert self.trace is not None
        return self.trace.of(kind, self.role)

    def take_all(self, kind: str) -> Sequence[Any]:
        """Return every recorded payload of a kind at once, for sources that look events up by key."""
        events = self.recorded(kind)
        with self._lock:
            self._replayed += len(events) - self._cursors.get(kind, 0)
            self._cursors[kind] = len(events)
        return events

    def recorded_range(self, kind: str, start: int, count: int) -> list[Any]:
        """Return up to `count` recorded payloads of a kind from index `start` on, taking none (replay mode)."""
        events = self.recorded(kind)
        with self._lock:  # a lazily decoded kind must not be walked by two threads at once
            return [events[index] for index in range(start, min(start + count, len(events)))]

    def take_range(self, kind: str, count: int) -> list[Any]:
        """Return the next `count` recorded payloads of a kind, fewer when the recording has no more (replay mode)."""
        events = self.recorded(kind)
        with self._lock:
            start = self._cursors.get(kind, 0)
            stop = min(start + count, len(events))
            payloads = [events[index] for index in range(start, stop)]
            self._cursors[kind] = stop
            self._replayed += len(payloads)
        return payloads

    def take(self, kind: str) -> Any:
        """Return the next recorded payload of a kind, or MISSING when the recording has no more."""
        events = self.recorded(kind)
        with self._lock:
            index = self._cursors.get(kind, 0)
            if index >= len(events):
                return MISSING
            # Read under the lock: a lazily decoded kind must not be walked by two threads at once.
            payload = events[index]
            self._cursors[kind] = index + 1
            self._replayed += 1
        return payload

    def exchange(self, kind: str, observed: Any, what: str, accept: Callable[[Any], bool] | None = None,
                 explain: Callable[[Any], str] | None = None) -> Any:
        """Record `observed`, or return the recorded value in its place; note departures as divergences.

        `what` names the call for messages ("random.seed()"); `accept` checks that a recorded value
        can stand in for this call (the same byte count, say), and `explain` says why it cannot.
        """
        site = call_site()
        if self.recording:
            self.emit(kind, [site, observed])
            return observed
        recorded = self.take(kind)
        if recorded is MISSING:
            if self.trace is not None and self.trace.complete:
                self.mismatch(kind, f"{what} at {site} has no counterpart in the recording "
                                    f"(it recorded {len(self.recorded(kind))} such calls)")
            return observed
        recorded_site, value = recorded
        if accept is not None and not accept(value):
            reason = explain(value) if explain is not None else f"does not match the recorded call at {recorded_site}"
            self.mismatch(kind, f"{what} at {site} {reason}")
            return observed
        if recorded_site != site:
            self.mismatch(kind, f"{what} called at {site}, but the recording has it at {recorded_site} "
                                "(the call order changed)")
        return value

    def mismatch(self, kind: str, message: str, step: int | None = None, batch: str | None = None) -> None:
        """Note an event the recording does not match: a likely cause, never the verdict by itself."""
        with self._lock:
            # The step in progress, so the verdict can pick the mismatches before a divergence.
            self.mismatches.append(Divergence(kind, message, self.steps + 1 if step is None else step, batch,
                                              check="event"))

    def diverge(self, kind: str, message: str, step: int | None = None, batch: str | None = None,
                check: str = "state", parts: tuple[str, ...] = ()) -> None:
        """Note a state or output check that differed; under --strict, stop the run here."""
        # The batched step checks first: they cover steps this check (a stdout line, a file) came after.
        self._flush_batched()
        self.divergences.append(Divergence(kind, message, step, batch, check=check,  # type: ignore[arg-type]
                                           parts=parts))
        if self.strict and len(self.divergences) == 1:
            from detrun.errors import ExitCode

            self._clear_progress()
            self.uninstall()  # puts the real stdout back, with everything the script printed so far
            self._finish_replay(exit_status=None)
            print("detrun: stopped by --strict at the first divergence", file=sys.stderr)
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(int(ExitCode.DIVERGED))

    # ----------------------------------------------------------------- steps and progress

    @property
    def steps(self) -> int:
        """Return how many training steps the program has completed."""
        return self.clock.step

    def on_flush(self, callback: Callable[[], None]) -> None:
        """Register batched work for about once a second between steps and before a divergence (end: on_stop)."""
        self._on_flush.append(callback)

    def _flush_batched(self) -> None:
        """Run the on_flush work now (not from within itself: a batched check may diverge)."""
        if self._flushing:
            return
        self._flushing = True
        try:
            for flush in self._on_flush:
                try:
                    flush()
                except Exception as exc:  # noqa: BLE001 - never change what the user's program does
                    self.hook_failed("writing or checking batched events", exc)
        finally:
            self._flushing = False

    def on_step(self) -> None:
        """After each step: about once a second, flush batched work and the trace; refresh the progress line."""
        now = time.monotonic()
        if now >= self._flush_due:
            # Once a second, not at every step: what a step's hooks batch reaches the file within
            # about a second, so a killed run loses no more than that.
            self._flush_due = now + FLUSH_SECONDS
            self._flush_batched()
            if self.writer is not None:
                with self._lock:
                    self.writer.flush()
        # Replay: an incomplete recording has no steps beyond this one.
        if (self.writer is None and self._incomplete_end_step is not None and self.clock.step >= self._incomplete_end_step
                and threading.current_thread() is threading.main_thread()):
            self._clear_progress()
            if not self.quiet:
                print(f"detrun: the recording ends after step {self.steps} "
                      f"({self.trace.end.get('reason') if self.trace and self.trace.end else 'incomplete'}): "
                      "stopping the replay there", file=sys.stderr)
            raise RecordingEnded()
        if self._progress is not None:
            if now >= self._progress_due:
                self._progress_due = now + 0.5
                self._show_progress()

    def _show_progress(self) -> None:
        if self.recording and self.writer is not None:
            detail = f"{sum(self.writer.counts.values())} events · {format_bytes(self.writer._file.tell())}"
        else:
            state = "ok" if not self.divergences else "DIVERGED"
            detail = f"{self._replayed} events · {state}"
        # A replay knows how many steps the recording made: `step 197/200`.
        total = self.trace.end.get("steps") if self.trace is not None and self.trace.end else None
        step = f"{self.steps}/{total}" if isinstance(total, int) and total > 0 else f"{self.steps}"
        assert self._progress is not None
        self._progress.send(f"detrun: {self.mode}ing · step {step} · {detail}")

    def _clear_progress(self) -> None:
        """Before detrun speaks on stderr: hide the progress line, and end the script's unfinished line."""
        if self._progress is not None:
            self._progress.fresh_line()

    # ----------------------------------------------------------------- lifecycle

    def install(self, sources: list[Any]) -> None:
        """Install every source's hooks; a source that fails to install is reported and skipped."""
        global _active, _fork_handler_registered
        _active = self
        if not _fork_handler_registered and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_detach_in_forked_child)
            _fork_handler_registered = True
        self.when_imported("torch", self.clock.attach_torch)
        self.on_uninstall(self.clock.detach_torch)
        for source in sources:
            try:
                source.install(self)
            except Exception as exc:  # noqa: BLE001
                self.hook_failed(f"installing {type(source).__name__}", exc)
                continue
            self.on_uninstall(source.uninstall)

    def uninstall(self) -> None:
        """Undo every hook, last installed first."""
        while self._uninstallers:
            undo = self._uninstallers.pop()
            try:
                undo()
            except Exception as exc:  # noqa: BLE001
                self.hook_failed("uninstalling hooks", exc)
        if self._watcher in sys.meta_path:
            sys.meta_path.remove(self._watcher)
        global _active
        if _active is self:
            _active = None

    def detach(self) -> None:
        """Undo this session's hooks in a forked child without touching the parent's trace."""
        self._progress = None  # the parent's progress line is not this process's
        self.writer = None  # the child's copy of the parent's writer must never write
        self._on_stop.clear()
        self._on_flush.clear()
        self._failed_hooks.add("uninstalling hooks")  # stay quiet about the parent's hooks
        self.uninstall()

    def _run_stop_callbacks(self) -> None:
        while self._on_stop:
            callback = self._on_stop.pop(0)
            try:
                callback()
            except Exception as exc:  # noqa: BLE001
                self.hook_failed("finishing the checks at the end of the run", exc)

    def finish(self, outcome: Outcome) -> Verdict | None:
        """Close the session after the user's code ended: write the end record, or return the verdict."""
        self._run_stop_callbacks()
        self._clear_progress()
        self.uninstall()
        self._merge_children()
        if self.process_key is not None:  # a rank: its segment or report; the launcher's session decides
            self.finish_process(outcome)
            return None
        self.wait_for_ranks()
        if self.recording:
            self.merge_process_segments()
            self._finish_record(outcome)
            return None
        self.merge_process_reports()
        ended_early = isinstance(outcome.system_exit, RecordingEnded)
        status = None if ended_early else outcome.exit_status
        return self._finish_replay(status, interrupted=outcome.keyboard_interrupt)

    def _finish_record(self, outcome: Outcome) -> None:
        assert self.writer is not None
        died = ", ".join(self.incomplete_processes)
        end = {
            "complete": not outcome.keyboard_interrupt and not died,
            "reason": "interrupted (KeyboardInterrupt)" if outcome.keyboard_interrupt
            else f"process(es) {died} died before they finished" if died else "exited",
            "exit_status": outcome.exit_status,
            "steps": max([self.steps, *(s.get("steps", 0) for s in self.process_summaries.values())]),
            "final_digest": self.last_digest,
            # A hook that failed while recording leaves a trace that cannot vouch for its replay.
            "hook_failures": self.hook_failures[:20],
        }
        events = sum(self.writer.counts.values())
        size = self.writer.close(end)
        final_path = publish(self.writer.path, self.settings["trace_path"], force=bool(self.settings.get("force")))
        if not self.quiet:
            status = "" if outcome.exit_status == 0 else f" · script exit status {outcome.exit_status}"
            per_step = f" · {size / self.steps:.0f} B/step" if self.steps else ""
            if self.process_summaries and not self.steps:  # a launched command: its ranks made the steps
                print(f"detrun: recorded {len(self.process_summaries)} process(es) → {final_path} "
                      f"({format_bytes(size)}){status}", file=sys.stderr)
            else:
                print(f"detrun: recorded {self.steps} steps, {events} events → {final_path} "
                      f"({format_bytes(size)}{per_step}){status}", file=sys.stderr)
            for label, summary in self.process_summaries.items():
                if summary:
                    print(f"detrun:   {label}: {summary['steps']} steps, {summary['events']} events, "
                          f"{format_bytes(summary['bytes'])}", file=sys.stderr)

def float_bits(value: float | None) -> str:
    """Return a float and its IEEE-754 bits, for divergence messages."""
    if value is None:
        return "none"
    return f"{value!r} (0x{struct.unpack('<Q', struct.pack('<d', value))[0]:016x})"
