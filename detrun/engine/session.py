"""The session: the one meeting point of the sources, the trace and the verdict.

In record mode every source hands the session what it observed and the session appends it to the
trace. In replay mode the session holds the recorded events, one cursor per event kind, and feeds
them back; whenever the program asks for something the recording does not have, it notes a
divergence with the call site instead of silently accepting it.
"""
from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.machinery
import os
import struct
import sys
import sysconfig
import tempfile
import threading
import time
from typing import Any, Callable

from detrun.engine.step_clock import StepClock
from detrun.runner import Outcome
from detrun.trace import Trace, TraceWriter
from detrun.trace.writer import publish

# Captured before any source patches os.urandom: detrun's own seeds must never appear as the
# program's entropy events.
_os_urandom = os.urandom

_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the detrun package
_STDLIB_DIR = sysconfig.get_paths()["stdlib"]


class _Missing:
    """Sentinel for an exhausted replay cursor."""


MISSING = _Missing()


@dataclasses.dataclass
class Divergence:
    """The first point where a replay departed from its recording, for one reason."""

    kind: str
    message: str
    step: int | None = None
    batch: str | None = None  # "DataLoader #0 epoch 1, batch 7" when the divergence is in the data


def call_site() -> str:
    """Return `file:line` of the nearest frame outside detrun and the standard library."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        own = filename.startswith(_OWN_DIR)
        stdlib = filename.startswith(_STDLIB_DIR) and "site-packages" not in filename
        if not (own or stdlib or filename.startswith("<frozen")):
            return f"{os.path.basename(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


def format_bytes(n: int) -> str:
    """Return a byte count the way a person reads it."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


class _ImportWatcher(importlib.abc.MetaPathFinder):
    """Run callbacks right after a module finishes importing, so heavy libraries stay lazy."""

    def __init__(self, on_error: Callable[[str, BaseException], None]) -> None:
        self.callbacks: dict[str, list[Callable[[Any], None]]] = {}
        self._on_error = on_error

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.callbacks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original_exec = loader.exec_module

        def exec_module(module: Any) -> None:
            original_exec(module)
            self.fire(fullname, module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec

    def fire(self, fullname: str, module: Any) -> None:
        """Run and forget the callbacks for a module that is now imported."""
        for callback in self.callbacks.pop(fullname, []):
            try:
                callback(module)
            except Exception as exc:  # noqa: BLE001 - a hook failure must not break the import
                self._on_error(f"setting up hooks for {fullname}", exc)


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


class Session:
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
    ) -> None:
        assert mode in ("record", "replay")
        self.mode = mode
        self.recording = mode == "record"
        self.writer = writer
        self.trace = trace
        self.settings = settings or {}
        self.strict = strict
        self.quiet = quiet
        self.role = role
        # tempfile draws random names the first time it looks for its directory; look now, in record
        # and replay alike and before any hook, so that neither detrun nor the program shifts the
        # program's recorded `random` seeds by being first.
        tempfile.gettempdir()
        self.divergences: list[Divergence] = []
        # The one step counter: torch's optimizer post-hook and the TensorFlow step hooks tick it.
        self.clock = StepClock(self.hook_failed, after_tick=self.on_step)
        self.checked: dict[str, int] = {}  # outputs verified besides steps, e.g. {"batches": 391}
        self.last_digest: int | None = None
        self._cursors: dict[str, int] = {}
        # Hooks fire from any thread (pin-memory threads, the user's own): one lock keeps the writer
        # and the cursors consistent; uncontended, it costs tens of nanoseconds.
        self._lock = threading.Lock()
        self._replayed = 0
        self._failed_hooks: set[str] = set()
        self._watcher = _ImportWatcher(self.hook_failed)
        self._uninstallers: list[Callable[[], None]] = []
        self._progress = not quiet and sys.stderr.isatty()
        self._progress_due = 0.0
        self._progress_shown = False
        self._on_stop: list[Callable[[], None]] = []
        # Differences that may explain a divergence (environment, pinned settings that could not
        # be pinned), most likely first; the verdict names the first one.
        self.causes: list[str] = []
        # Child processes (DataLoader workers) write trace segments, or in replay report files,
        # that the main session merges when it finishes.
        self.segment_paths: list[str] = []
        self.report_paths: list[str] = []

    # ----------------------------------------------------------------- shared services

    def fresh_seed(self, bits: int = 64) -> int:
        """Return a new random seed from OS entropy, invisible to the entropy source."""
        return int.from_bytes(_os_urandom((bits + 7) // 8), "little") >> (-bits % 8)

    def when_imported(self, module_name: str, callback: Callable[[Any], None]) -> None:
        """Call callback(module) once the module is imported (now, if it already is)."""
        module = sys.modules.get(module_name)
        if module is not None and getattr(module, "__spec__", None) is not None and not _initialising(module):
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
        self._clear_progress()
        print(f"detrun: warning: internal error in {where}: {type(exc).__name__}: {exc} "
              f"(the run continues; this source may not reproduce)", file=sys.stderr)

    # ----------------------------------------------------------------- events

    def emit(self, kind: str, payload: Any) -> None:
        """Append an event to the trace (record mode)."""
        assert self.writer is not None
        with self._lock:
            self.writer.event(kind, payload)

    def recorded(self, kind: str) -> list[Any]:
        """Return all recorded payloads of a kind for this process's role (replay mode)."""
        assert self.trace is not None
        return self.trace.of(kind, self.role)

    def take_all(self, kind: str) -> list[Any]:
        """Return every recorded payload of a kind at once, for sources that look events up by key."""
        events = self.recorded(kind)
        with self._lock:
            self._replayed += len(events) - self._cursors.get(kind, 0)
            self._cursors[kind] = len(events)
        return events

    def take(self, kind: str) -> Any:
        """Return the next recorded payload of a kind, or MISSING when the recording has no more."""
        events = self.recorded(kind)
        with self._lock:
            index = self._cursors.get(kind, 0)
            if index >= len(events):
                return MISSING
            self._cursors[kind] = index + 1
            self._replayed += 1
        return events[index]

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
                self.diverge(kind, f"{what} at {site} has no counterpart in the recording "
                                   f"(it recorded {len(self.recorded(kind))} such calls)")
            return observed
        recorded_site, value = recorded
        if accept is not None and not accept(value):
            reason = explain(value) if explain is not None else f"does not match the recorded call at {recorded_site}"
            self.diverge(kind, f"{what} at {site} {reason}")
            return observed
        if recorded_site != site:
            self.diverge(kind, f"{what} called at {site}, but the recording has it at {recorded_site} "
                               "(the call order changed)")
        return value

    def diverge(self, kind: str, message: str, step: int | None = None, batch: str | None = None) -> None:
        """Note a divergence; under --strict, stop the run here."""
        self.divergences.append(Divergence(kind, message, step, batch))
        if self.strict and len(self.divergences) == 1:
            from detrun.errors import ExitCode

            self._clear_progress()
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

    def on_step(self) -> None:
        """After each step: flush the trace now and then and refresh the progress line."""
        if self.writer is not None:
            with self._lock:
                self.writer.maybe_flush()
        if self._progress:
            now = time.monotonic()
            if now >= self._progress_due:
                self._progress_due = now + 0.5
                self._show_progress()

    def _show_progress(self) -> None:
        if self.recording and self.writer is not None:
            detail = f"{sum(self.writer.counts.values())} events · {format_bytes(self.writer._file.tell())}"
        else:
            state = "ok" if not self.divergences else "DIVERGED"
            detail = f"{self._replayed} events · {state}"
        sys.stderr.write(f"\rdetrun: {self.mode}ing · step {self.steps} · {detail}\x1b[K")
        sys.stderr.flush()
        self._progress_shown = True

    def _clear_progress(self) -> None:
        if self._progress_shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._progress_shown = False

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
        self.writer = None  # the child's copy of the parent's writer must never write
        self._on_stop.clear()
        self._failed_hooks.add("uninstalling hooks")  # stay quiet about the parent's hooks
        self.uninstall()

    # ----------------------------------------------------------------- child processes

    # The private directory (mode 0700) detrun's launcher made for this run's scratch files; set from
    # detrun's own config, never from a trace. None outside the launcher: made on first use then.
    scratch_dir: str | None = None

    def scratch_path(self, name: str) -> str:
        """Return a path in the private scratch directory for a child process's segment or report.

        Never beside the trace: the program's own listings of its directory would see the file.
        """
        if self.scratch_dir is None:
            # Named from the unhooked entropy: tempfile's own names would draw on the program's
            # `random` and shift its recorded seeds (gettempdir() was cached before the hooks).
            self.scratch_dir = os.path.join(tempfile.gettempdir(), f"detrun-{os.getpid()}-{_os_urandom(6).hex()}")
            os.mkdir(self.scratch_dir, 0o700)
        return os.path.join(self.scratch_dir, name)

    def finish_child(self) -> None:
        """Close a child process's session: its segment in record mode, its report in replay mode."""
        self._run_stop_callbacks()
        self.uninstall()
        if self.recording:
            assert self.writer is not None
            partial = self.writer.path
            self.writer.close()
            os.replace(partial, partial.removesuffix(".partial"))
            return
        report_path = self.settings.get("report_path")
        if report_path:
            import json

            if self.trace is not None and self.trace.complete:
                for kind, message in self._unused_events():
                    # Appended, not diverge(): --strict belongs to the main process.
                    self.divergences.append(Divergence(kind, f"{self.role}: {message}"))
            with open(report_path, "w", encoding="utf-8") as report:
                json.dump([dataclasses.asdict(d) for d in self.divergences], report)

    def _merge_children(self) -> None:
        """Fold finished child segments into the trace, or child divergences into the verdict."""
        if self.recording and self.writer is not None:
            finished = [p for p in self.segment_paths if os.path.exists(p)]
            for unfinished in self.segment_paths:
                if os.path.exists(unfinished + ".partial"):
                    os.unlink(unfinished + ".partial")
            if finished:
                self.writer.append_segments(finished)
            return
        import json

        for path in self.report_paths:
            try:
                with open(path, encoding="utf-8") as report:
                    for item in json.load(report):
                        self.divergences.append(Divergence(**item))
                os.unlink(path)
            except (OSError, ValueError, TypeError):
                continue

    def _run_stop_callbacks(self) -> None:
        while self._on_stop:
            callback = self._on_stop.pop(0)
            try:
                callback()
            except Exception as exc:  # noqa: BLE001
                self.hook_failed("finishing step digests", exc)

    def finish(self, outcome: Outcome) -> None:
        """Close the session after the user's code ended: write the end record or give the verdict."""
        self._run_stop_callbacks()
        self._clear_progress()
        self.uninstall()
        self._merge_children()
        if self.recording:
            self._finish_record(outcome)
        else:
            self._finish_replay(outcome.exit_status, interrupted=outcome.keyboard_interrupt)

    def _finish_record(self, outcome: Outcome) -> None:
        assert self.writer is not None
        end = {
            "complete": not outcome.keyboard_interrupt,
            "reason": "interrupted (KeyboardInterrupt)" if outcome.keyboard_interrupt else "exited",
            "exit_status": outcome.exit_status,
            "steps": self.steps,
            "final_digest": self.last_digest,
        }
        events = sum(self.writer.counts.values())
        size = self.writer.close(end)
        final_path = publish(self.writer.path, self.settings["trace_path"], force=bool(self.settings.get("force")))
        if not self.quiet:
            status = "" if outcome.exit_status == 0 else f" · script exit status {outcome.exit_status}"
            per_step = f" · {size / self.steps:.0f} B/step" if self.steps else ""
            print(f"detrun: recorded {self.steps} steps, {events} events → {final_path} "
                  f"({format_bytes(size)}{per_step}){status}", file=sys.stderr)

    def _finish_replay(self, exit_status: int | None, interrupted: bool = False) -> None:
        assert self.trace is not None
        if exit_status is not None and self.trace.complete and not interrupted:
            self._check_leftovers(exit_status)
        print(f"detrun: {self.verdict()}", file=sys.stderr)

    def _check_leftovers(self, exit_status: int) -> None:
        """Report recorded events the replay never asked for, and a changed exit status."""
        assert self.trace is not None
        for kind, message in self._unused_events():
            self.diverge(kind, message)
        recorded_status = self.trace.end.get("exit_status") if self.trace.end else None
        if recorded_status is not None and recorded_status != exit_status:
            self.diverge("exit", f"exit status recorded {recorded_status}, got {exit_status}")

    def _unused_events(self) -> list[tuple[str, str]]:
        """Return (kind, message) for every kind whose recorded events the replay did not all use."""
        assert self.trace is not None
        unused = []
        for kind, events in self.trace.events.get(self.role, {}).items():
            used = self._cursors.get(kind, 0)
            if used >= len(events):
                continue
            if kind == "step":
                unused.append((kind, f"the replay made {used} optimizer steps, the recording {len(events)}"))
            else:
                unused.append((kind, f"the recording has {len(events) - used} more {kind} event(s) "
                                     "that the replay never asked for"))
        return unused

    def verdict(self) -> str:
        """Return the one-line verdict of a replay."""
        assert self.trace is not None
        incomplete = "" if self.trace.complete else " (the trace is incomplete: only its recorded part was checked)"
        if self.divergences:
            first = self.divergences[0]
            more = len(self.divergences) - 1
            tail = f" (+{more} more)" if more else ""
            where = f" at step {first.step}" if first.step is not None else ""
            cause = f"; likely cause: {self.causes[0]}" if self.causes else ""
            batch = next((d.batch for d in self.divergences if d.batch), None)
            first_batch = f"; first divergent batch: {batch}" if batch and first.batch is None else ""
            return f"DIVERGED{where}: {first.message}{tail}{first_batch}{cause}{incomplete}"
        other_checks = "".join(f", {count} {what}" for what, count in self.checked.items() if count)
        if self.steps == 0 and not other_checks:
            if self._replayed == 0:
                return "UNVERIFIED (the run made no optimizer steps and used no recorded events: nothing was checked)"
            return (f"UNVERIFIED ({self._replayed} recorded events were fed back, but the run made no "
                    "optimizer steps, so no outputs were checked)")
        digest = f", final digest {self.last_digest:08x}" if self.last_digest is not None else ""
        return f"REPRODUCED ({self.steps} steps{other_checks}, {self._replayed} events{digest}){incomplete}"


def _initialising(module: Any) -> bool:
    """Return whether a module in sys.modules is still executing its own import."""
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def float_bits(value: float | None) -> str:
    """Return a float and its IEEE-754 bits, for divergence messages."""
    if value is None:
        return "none"
    return f"{value!r} (0x{struct.unpack('<Q', struct.pack('<d', value))[0]:016x})"
