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

        # Mirrors subprocess.Popen._execute_child (CPython 3.10-3.13, POSIX): env is its 8th argument.
        def _execute_child(process: Any, args: Any, executable: Any, preexec_fn: Any, close_fds: Any,
                           pass_fds: Any, cwd: Any, env: Any, *rest: Any) -> Any:
            if source._session is not None:
                try:
                    env = child_environment(hidden, os.environ if env is None else env)
                except Exception as exc:  # noqa: BLE001 - never change what the program does
                    source._session.hook_failed("the subprocess hook", exc)
            return original(process, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, *rest)

        _execute_child.__detrun_original__ = original  # type: ignore[attr-defined]
        self._patcher.setattr(popen, "_execute_child", _execute_child)

    def uninstall(self) -> None:
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
