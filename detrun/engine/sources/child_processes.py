"""Child processes: note every process that runs the script's code without a session of its own.

The processes the script starts with `subprocess` (Lightning's DDP launcher re-running the script
per rank) get detrun's bootstrap back in their environment (detrun.bootstrap), so their ranks record.

DataLoader workers record their own trace segments. Any other `multiprocessing` child (a
`Process(target=train)`, a `Pool`, a `ProcessPoolExecutor`, torch's `spawn`) runs unrecorded: what
it does is neither replayed nor checked, so a replay that relied on one is UNVERIFIED, naming it.
Every `multiprocessing` start method goes through `BaseProcess.start`, so one hook covers them.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from detrun.bootstrap import child_environment
from detrun.engine.patcher import Patcher
from detrun.engine.process_roles import key_from_env

if TYPE_CHECKING:
    from detrun.engine.session import Session

# Targets that are infrastructure, not the script's training: DataLoader workers (recorded on
# their own, through torch's worker loop or detrun's wrapper of it), the inductor compiler's
# workers, multiprocessing's manager servers.
_INFRASTRUCTURE = ("detrun.", "torch.utils.data.", "torch._inductor.", "multiprocessing.managers",
                   "multiprocessing.resource_")


class ChildProcessSource:
    """Note the multiprocessing children that run without a session (record and replay alike)."""

    def __init__(self) -> None:
        self._patcher = Patcher()
        # Its own: `_patcher.active` is the multiprocessing hook's "installed already" (subprocess is
        # usually imported first, and must not make that hook look installed).
        self._subprocess_patcher = Patcher()
        self._session: Session | None = None

    def install(self, session: Session) -> None:
        if self._session is not None:
            return
        self._session = session
        session.when_imported("multiprocessing.process", self._hook)
        hidden = session.settings.get("child_env")
        if hidden:
            session.when_imported("subprocess", lambda module: self._hook_subprocess(module, hidden))

    def _hook_subprocess(self, subprocess_module: Any, hidden: dict[str, str]) -> None:
        """Give every process the script starts detrun's bootstrap, which bootstrap.hide took from its view."""
        popen = subprocess_module.Popen
        original = popen._execute_child
        if getattr(original, "__detrun_original__", None) is not None:
            return
        source = self

        # Mirrors subprocess.Popen._execute_child (CPython 3.10-3.13, POSIX): env is its 8th argument,
        # then startupinfo, creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite, ...
        def _execute_child(process: Any, args: Any, executable: Any, preexec_fn: Any, close_fds: Any,
                           pass_fds: Any, cwd: Any, env: Any, *rest: Any) -> Any:
            session = source._session
            rank = False
            if session is not None:
                try:
                    env = child_environment(hidden, os.environ if env is None else env)
                    rank = key_from_env(env) is not None
                    rest = _rank_stdout(session, env, rest) if rank else rest
                except Exception as exc:  # noqa: BLE001 - never change what the program does
                    session.hook_failed("the subprocess hook", exc)
            result = original(process, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, *rest)
            if rank and session is not None:
                session.rank_processes.append(process)  # its segment or report is merged once it exits
            return result

        _execute_child.__detrun_original__ = original  # type: ignore[attr-defined]
        self._subprocess_patcher.setattr(popen, "_execute_child", _execute_child)

    def uninstall(self) -> None:
        self._subprocess_patcher.undo()
        self._patcher.undo()
        self._session = None

    def _hook(self, process_module: Any) -> None:
        if self._patcher.active or self._session is None:
            return
        base = process_module.BaseProcess
        original = base.start
        source = self

        # Mirrors multiprocessing.process.BaseProcess.start (CPython 3.10-3.13).
        def start(process: Any) -> None:
            session = source._session
            if session is not None:
                try:
                    label = _describe(process)
                    if label is not None:
                        session.note_unrecorded(label)
                except Exception as exc:  # noqa: BLE001 - never change what the program does
                    session.hook_failed("the child process hook", exc)
            return original(process)

        start.__doc__ = original.__doc__
        self._patcher.setattr(base, "start", start)


_C2PREAD, _C2PWRITE = 5, 6  # positions in _execute_child's arguments after env


def _rank_stdout(session: Session, env: dict[str, str], rest: tuple[Any, ...]) -> tuple[Any, ...]:
    """Give a rank the script starts the real stdout, not this process's checked copy of it.

    A rank records and checks its own stdout; through the tee its lines would also reach this
    process's check, interleaved with its own in an order that differs between runs.
    """
    if (session.unteed_stdout_fd is None or len(rest) <= _C2PWRITE
            or rest[_C2PREAD] != -1 or rest[_C2PWRITE] != -1):
        return rest  # not a rank, or its stdout is redirected already
    return (*rest[:_C2PWRITE], session.unteed_stdout_fd, *rest[_C2PWRITE + 1:])


def _describe(process: Any) -> str | None:
    """Return how to name a child that runs unrecorded, or None for infrastructure."""
    target = getattr(process, "_target", None)
    # A callable instance (detrun's DataLoader worker entry) has its class's module, not its own.
    module = str(getattr(target, "__module__", None) or getattr(type(target), "__module__", "") or "")
    name = str(getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or type(process).__name__)
    if any(module.startswith(prefix) for prefix in _INFRASTRUCTURE):
        return None
    if module in ("multiprocessing.pool", "concurrent.futures.process"):
        return f"a worker of a {module} pool"
    if module in ("__main__", "__mp_main__"):
        return f"multiprocessing.Process(target={name})"
    return f"multiprocessing.Process(target={module}.{name})" if module else f"multiprocessing.Process({name})"
