"""Record and replay code that runs in this process: a notebook cell, a test, a function.

    with detrun.record("trace.zst"):
        train()
    with detrun.replay("trace.zst") as result:
        train()
    result.verdict               # "REPRODUCED", "DIVERGED" or "UNVERIFIED"; .reason, .step, .line
    result.raise_for_verdict()   # DivergedError / UnverifiedError unless REPRODUCED

    detrun.check(train, 5)       # train(5) recorded, then replayed: the replay's ReplayResult

The engine is `detrun record`'s (the Session and its sources), installed around the block instead
of around a script in a child interpreter. Only an in-process recording can be replayed in-process,
and the command line refuses to replay one. What differs from `detrun record`, so what to know:

- Hash seed: an interpreter's PYTHONHASHSEED is fixed when it starts, and the block runs with this
  one's. The trace keeps a probe of it (`hash()` of a fixed string), and a replay in an interpreter
  that hashes differently names that as the likely cause if it diverges; REPRODUCED still means
  every check matched. Code whose result depends on the order of a set of strings replays in
  another process only if both were started with the same PYTHONHASHSEED (`PYTHONHASHSEED=0
  jupyter lab`, `PYTHONHASHSEED=0 pytest`).
- Generators: the exact states of Python's `random`, numpy's global generator and torch's default
  generators at the start of the block are recorded and a replay restores them, so the block
  computes what it would without detrun and does not depend on what ran before its replay.
  TensorFlow's global seed is set from a recorded seed. `random.Random`, numpy `Generator` and
  `torch.Generator` objects made before the block, and DataLoaders made before it, are not
  recorded: make them inside the block.
- Imports: torch, numpy and TensorFlow imported before the block are hooked when it starts; hooks
  never need a fresh import. The determinism policy's `CUBLAS_WORKSPACE_CONFIG` only takes effect if CUDA was
  not started before the block.
- Threads: the thread environment variables were read when the libraries loaded and are not pinned
  (a difference from the recording is named as a likely cause); torch's own thread counts are
  pinned during a replay (inter-op only if no parallel work ran yet). After a replay block, torch's
  intra-op thread count and backend flags are put back to what they were before it.
- Output: stdout is not teed or compared (a notebook's output does not go through file descriptor
  1), and Ctrl-C is not recorded: it ends the block with KeyboardInterrupt; a recording is then
  closed as incomplete, and a replay that did not reach the recording's end is UNVERIFIED (or
  DIVERGED, if a step before the interrupt differed). How the block ended (normally or by an
  exception) is compared, as a script's exit status is.
- Second calls: what the code keeps between calls in this process (a cached model, a lazily built
  table) is reused by the replay instead of made again; if that changes what the block does, the
  replay says so as a divergence. Keep the block's work self-contained.
- Final state: the models and optimizers made in the block and the global RNG states are checked
  at the end; `__main__`'s globals are not (they are the notebook's or pytest's).
- Hooks are process-wide while the block runs: other threads' random draws are recorded too. One
  block at a time: nesting one in another, or using one under `detrun record`, is refused, and every
  hook is undone when the block ends, exception or not.
"""
from __future__ import annotations

import datetime
import os
import sys
import tempfile
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, Callable

from detrun.engine.call_sites import entry_point
from detrun.replay_result import DivergedError, ReplayResult, UnverifiedError, VerdictError

if TYPE_CHECKING:
    from detrun.engine.session import Session
    from detrun.engine.verdict import Verdict
    from detrun.runner import Outcome

_HASH_PROBE_TEXT = "detrun: which hash seed is this interpreter's?"


class SessionActiveError(RuntimeError):
    """A record or replay block was opened while another is active in this process."""


class _Block:
    """A `with` block that runs under a session of this process; entered once."""

    def __init__(self, path: str | os.PathLike[str], quiet: bool) -> None:
        self.path = os.fspath(path)
        self.quiet = quiet
        self._entered = False
        self._session: Session | None = None
        self._cleanup = ExitStack()

    @entry_point
    def __enter__(self) -> Any:
        if self._entered:
            raise RuntimeError(f"this detrun.{self._name()}() block was already used; call "
                               f"detrun.{self._name()}() again for another block")
        self._entered = True
        _refuse_nesting(self._name())
        try:
            self._session = self._open(self._cleanup.enter_context(_scratch()))
        except BaseException:
            self._cleanup.close()
            raise
        return self._value()

    @entry_point
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        session, self._session = self._session, None
        assert session is not None
        with self._cleanup:
            try:
                return self._close(session, _outcome_of(exc), exc)
            finally:
                session.uninstall()  # finish() already did; this covers a failure before it could

    def _name(self) -> str:
        raise NotImplementedError

    def _open(self, scratch: str) -> Session:
        raise NotImplementedError

    def _value(self) -> Any:
        return None

    def _close(self, session: Session, outcome: Outcome, exc: BaseException | None) -> bool:
        raise NotImplementedError


class _Record(_Block):
    def __init__(self, path: str | os.PathLike[str], force: bool, quiet: bool, policy: str,
                 profile: str | None, digest_every: int, kernel_steps: int, label: str | None = None) -> None:
        super().__init__(path, quiet)
        self.force = force
        self.label = label  # what `detrun show` names as the script; the `with` line when None
        self.settings_wanted = (policy, profile, digest_every, kernel_steps)

    def _name(self) -> str:
        return "record"

    def _open(self, scratch: str) -> Session:
        from detrun import __version__
        from detrun.engine.session import Session
        from detrun.env.fingerprint import THREAD_ENV_NAMES, fingerprint
        from detrun.launch import check_output, policy_ops
        from detrun.trace import TraceWriter

        policy, profile, digest_every, kernel_steps = self.settings_wanted
        check_output(self.path, self.force)
        settings = {
            "thread_env": {name: os.environ.get(name) for name in THREAD_ENV_NAMES},
            "digest_every": digest_every,
            "digest_last_step": True,
            "policy": policy,
            "policy_ops": policy_ops(policy, profile),
            "tf_op_determinism": policy != "off",
            "kernel_steps": kernel_steps,
            "in_process": True,
            "hash_probe": hash_probe(),
        }
        header = {
            "detrun_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "env": fingerprint(os.getcwd()),
            "script": {"name": f"<in-process: {self.label or f'block at {_caller()}'}>", "module": False,
                       "path": None, "sha256": None},
            "argv": [],
            "cwd": os.getcwd(),
            "settings": settings,
        }
        writer = TraceWriter(os.path.join(scratch, "trace.partial"), header)
        session = Session("record", writer=writer, quiet=self.quiet,
                          settings={**settings, "trace_path": self.path, "force": self.force})
        return _install(session, scratch)

    def _close(self, session: Session, outcome: Outcome, exc: BaseException | None) -> bool:
        try:
            session.finish(outcome)
        except Exception as error:  # noqa: BLE001 - the output could not be written
            if exc is None:
                raise
            print(f"detrun: error: {error}", file=sys.stderr)  # the block's own exception goes on
        return False


class _Replay(_Block):
    def __init__(self, path: str | os.PathLike[str], quiet: bool, check: bool) -> None:
        super().__init__(path, quiet)
        self.check = check
        self.result = ReplayResult(self.path)
        self._torch_before: _TorchSettings | None = None

    def _name(self) -> str:
        return "replay"

    def _value(self) -> ReplayResult:
        return self.result

    def _open(self, scratch: str) -> Session:
        from detrun.engine.session import Session
        from detrun.env import diff as env_diff
        from detrun.env.fingerprint import fingerprint
        from detrun.errors import TargetRefused
        from detrun.replay_inputs import RECORDED_SETTINGS, as_dict
        from detrun.trace import read_trace

        trace = read_trace(self.path)
        recorded = trace.header.get("settings") or {}
        if not recorded.get("in_process"):
            raise TargetRefused(f"{self.path} was recorded by `detrun record` from a script in its own process; "
                                "replay it with `detrun replay`")
        if not trace.complete and not self.quiet:
            print(f"detrun: warning: the trace is incomplete ({trace.end.get('reason') if trace.end else '?'}); "
                  "only its recorded part can be checked", file=sys.stderr)
        settings = {key: recorded[key] for key in (*RECORDED_SETTINGS, "in_process", "hash_probe") if key in recorded}
        session = Session("replay", trace=trace, quiet=self.quiet, settings={**settings, "pin_threads": True})
        differences = env_diff.classify(env_diff.diff(as_dict(trace.header.get("env")), fingerprint(os.getcwd())),
                                        threads_pinned=False)
        if not self.quiet:
            for line in env_diff.report_lines(differences):
                print(f"detrun: {line}", file=sys.stderr)
        for cause in env_diff.causes(differences):
            session.note_cause(cause)
        if recorded.get("hash_probe") != hash_probe():
            session.note_cause("this interpreter hashes strings differently from the recording's (another "
                               "PYTHONHASHSEED), so the order of sets of strings can differ; start both with the "
                               "same PYTHONHASHSEED", likely=True)
        self._torch_before = _TorchSettings.save()
        return _install(session, scratch)

    def _close(self, session: Session, outcome: Outcome, exc: BaseException | None) -> bool:
        from detrun.engine.session import RecordingEnded

        try:
            verdict = session.finish(outcome)
        finally:
            if self._torch_before is not None:
                self._torch_before.restore()
        assert verdict is not None
        if outcome.keyboard_interrupt and session.trace is not None and session.trace.complete:
            verdict = _interrupted(session)
            print(f"detrun: {verdict.line}", file=sys.stderr)  # the line above judged the end it never reached
        self.result.fill(verdict, session.facts())
        if isinstance(exc, RecordingEnded):
            return True  # the incomplete recording ended here: the block stops, the verdict says so
        if exc is None and self.check:
            self.result.raise_for_verdict()
        return False


def record(path: str | os.PathLike[str] = "trace.zst", *, force: bool = False, quiet: bool = False,
           policy: str = "strict", profile: str | None = None, digest_every: int = 0,
           kernel_steps: int = 0) -> _Record:
    """Record the `with` block's nondeterminism and training state into the trace at `path`.

    The options are `detrun record`'s, with its defaults: `force` overwrites an existing trace,
    `policy` is "strict", "off", or "minimal" with `profile` (a `detrun profile --json` file),
    `digest_every` is 0 for `auto` (parameter digests within 0.25% of the step time) or N. The limits
    of an in-process recording are in this module's docstring; `check()` digests every step.
    """
    return _Record(path, force, quiet, _valid_policy(policy), profile, digest_every, kernel_steps)


def _valid_policy(policy: str) -> str:
    """Return the policy name, or raise PolicyError for one `detrun record --policy` would refuse."""
    from detrun.errors import PolicyError

    if policy not in ("strict", "minimal", "off"):
        raise PolicyError(f"unknown policy {policy!r}; choose strict, minimal or off")
    return policy


def replay(path: str | os.PathLike[str] = "trace.zst", *, check: bool = False, quiet: bool = False) -> _Replay:
    """Replay an in-process recording around the `with` block; `as result` gives its ReplayResult.

    The verdict is known when the block ends. With `check=True` the block raises DivergedError or
    UnverifiedError unless it is REPRODUCED (the block's own exception, if any, goes first).
    """
    return _Replay(path, quiet, check)


def check(fn: Callable[..., object], /, *args: Any, **kwargs: Any) -> ReplayResult:
    """Call fn(*args, **kwargs) recording, then again replaying, in this process; return the replay's result."""
    return check_call(fn, args, kwargs)


def check_call(fn: Callable[..., object], args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, *,
               trace: str | os.PathLike[str] | None = None, policy: str = "strict",
               quiet: bool = True) -> ReplayResult:
    """Record fn(*args, **kwargs) into `trace` (overwritten; a temporary file if None), replay it, return the result."""
    with ExitStack() as stack:
        if trace is None:
            trace = os.path.join(stack.enter_context(tempfile.TemporaryDirectory(prefix="detrun-check-")),
                                 "trace.zst")
        name = f"{getattr(fn, '__module__', None) or '?'}.{getattr(fn, '__qualname__', None) or type(fn).__name__}()"
        with _Record(trace, True, quiet, _valid_policy(policy), None, 1, 2, label=name):
            fn(*args, **(kwargs or {}))
        with replay(trace, quiet=quiet) as result:
            fn(*args, **(kwargs or {}))
    return result


def hash_probe() -> int:
    """Return this interpreter's hash of a fixed string: equal only under the same hash seed."""
    return hash(_HASH_PROBE_TEXT) & ((1 << 64) - 1)


class _TorchSettings:
    """torch's intra-op thread count and backend flags, saved before a replay pins the recorded ones."""

    def __init__(self, torch: Any, threads: int, flags: list[Any], values: dict[str, Any]) -> None:
        self.torch, self.threads, self.flags, self.values = torch, threads, flags, values

    @classmethod
    def save(cls) -> _TorchSettings | None:
        """Return the current settings, or None when torch is not imported (a fresh import restores nothing)."""
        torch = sys.modules.get("torch")
        if torch is None or not hasattr(torch, "get_num_threads"):
            return None
        from detrun.env.torch_facts import flag_table, snapshot

        flags = flag_table(torch)
        return cls(torch, torch.get_num_threads(), flags, snapshot(flags))

    def restore(self) -> None:
        """Put back every saved setting that is different now; report, never raise, what will not go back."""
        from detrun.env.torch_facts import snapshot

        try:
            if self.torch.get_num_threads() != self.threads:
                self.torch.set_num_threads(self.threads)
            now = snapshot(self.flags)
            for flag in self.flags:
                if flag.derived or flag.set is None or flag.name not in self.values:
                    continue
                if now.get(flag.name) != self.values[flag.name]:
                    flag.set(self.values[flag.name], self.values)
                    now = snapshot(self.flags)
        except Exception as exc:  # noqa: BLE001 - the verdict stands; say what was left changed
            print(f"detrun: warning: could not put torch's settings back after the replay: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)


def _install(session: Session, scratch: str) -> Session:
    """Install every in-process source on the session; undo them all if installing fails."""
    from detrun.engine.sources import all_sources

    session.scratch_dir = scratch  # DataLoader workers' segments and reports
    try:
        session.install(all_sources(in_process=True))
    except BaseException:
        session.uninstall()
        raise
    return session


def _scratch() -> Any:
    """Return the context of this block's private scratch directory (the `detrun record` one)."""
    from detrun.child_process import scratch_directory

    return scratch_directory()


def _refuse_nesting(name: str) -> None:
    """Raise SessionActiveError when a session is already installed in this process."""
    from detrun.engine.session import active_session

    active = active_session()
    if active is not None:
        inside = "another detrun block" if active.settings.get("in_process") else "`detrun record`/`replay`"
        raise SessionActiveError(f"detrun.{name}() cannot start inside {inside}: one recording or replay per "
                                 "process at a time (blocks do not nest)")


def _outcome_of(exc: BaseException | None) -> Outcome:
    """Return how the block ended, as the child's runner reports how a script ended."""
    from detrun.runner import Outcome, exit_status_of

    if exc is None:
        return Outcome(0)
    if isinstance(exc, SystemExit):
        return Outcome(exit_status_of(exc.code), system_exit=exc)
    if isinstance(exc, KeyboardInterrupt):
        return Outcome(130, keyboard_interrupt=True)
    return Outcome(1)


def _interrupted(session: Session) -> Verdict:
    """Return the verdict of a replay block that Ctrl-C ended before the recording's end.

    The final state was compared with the recording's end, which this replay never reached: that
    comparison is dropped. A step that differed before the interrupt is still DIVERGED; otherwise
    the part that ran matched, which is not the whole run: UNVERIFIED.
    """
    from detrun.engine.verdict import Verdict, decide
    from detrun.trace.registry import FINAL_STATE

    session.divergences = [d for d in session.divergences if d.kind != FINAL_STATE]
    verdict = decide(session.facts())
    if verdict.status != "REPRODUCED":
        return verdict
    reason = ("the replay was interrupted (KeyboardInterrupt) before the end of the recording; "
              f"the part that ran matched ({verdict.line.removeprefix('REPRODUCED ').strip('()')})")
    return Verdict("UNVERIFIED", f"UNVERIFIED ({reason})", reason)


def _caller() -> str:
    """Return `file:line` of the code that opened the block (for `detrun show`)."""
    frame = sys._getframe(3)
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


__all__ = ["record", "replay", "check", "check_call", "ReplayResult", "VerdictError", "DivergedError",
           "UnverifiedError", "SessionActiveError", "hash_probe"]
