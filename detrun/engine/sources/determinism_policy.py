"""The determinism policy: deterministic algorithms, no cuDNN autotuning, cuBLAS workspace, op patches.

Record and replay apply the same policy the moment the script imports torch, before anything can
touch CUDA, so the recorded run is itself reproducible. The trace keeps what was applied; a replay
where a patch could not be installed (another torch, say) notes it as a likely cause.

`fill_uninitialized_memory` starts off and is turned on the first time the program's own code
(not a library's) asks for uninitialised memory: `torch.empty`, `empty_like`, `empty_strided`,
`Tensor.new_empty`, `Tensor.resize_`. Only such memory can be read before it is written; torch's
kernels write every output they allocate. The switch goes through torch's setter, so the
backend_flags source records it with the program's line, and a replay makes it at the same point.
"""
from __future__ import annotations

import sys
from types import CodeType
from typing import TYPE_CHECKING, Any, Callable

from detrun.engine.patcher import Patcher
from detrun.trace.registry import POLICY as KIND  # the kind, its payload schema and version

if TYPE_CHECKING:
    from detrun.engine.session import Session

POLICIES = ("strict", "minimal", "off")


class PolicySource:
    """Apply the session's policy when torch is imported; remove it at the end."""

    def __init__(self) -> None:
        self._installed = False
        self._applied = False
        self._empty_watch = Patcher()

    def install(self, session: Session) -> None:
        if self._installed:
            return
        self._installed = True
        session.when_imported("torch", lambda torch: self._hook(session))

    def _hook(self, session: Session) -> None:
        name = session.settings.get("policy", "strict")
        if not self._installed or name == "off":
            return
        from detrun.patches.patch_policy import apply_policy

        applied = apply_policy(name, set(session.settings.get("policy_ops") or ()), fill_uninitialized_memory=False)
        self._applied = True
        try:
            self._watch_uninitialised_memory(session)
        except Exception as exc:  # noqa: BLE001 - never change what the program does
            self._empty_watch.undo()
            session.hook_failed("the uninitialised-memory watch", exc)
        summary = {"policy": applied.get("policy"), "patches": applied.get("patches", []),
                   "flags": applied.get("flags", {})}
        if session.recording:
            session.emit(KIND, summary)
            return
        recorded = session.take(KIND)
        if isinstance(recorded, dict):
            missing = sorted(set(recorded.get("patches", [])) - set(summary["patches"]))
            if missing:
                session.note_cause(f"patches applied when recording could not be installed now: {', '.join(missing)}",
                                   likely=True)

    def _watch_uninitialised_memory(self, session: Session) -> None:
        """Turn fill_uninitialized_memory on at the program's first call that returns uninitialised memory."""
        import torch

        from detrun.engine.file_fingerprint import library_prefixes

        libraries = (*library_prefixes(), "<frozen")
        watch = self._empty_watch
        getframe = sys._getframe
        # Each caller is judged once, by its code object: a library that calls on and on (torch
        # rebuilds every tensor a DataLoader worker sends with torch.empty, at every batch) then
        # costs one set lookup a call, not a walk to its file name and two prefix tests.
        library_callers: set[CodeType] = set()

        def judge(code: CodeType) -> None:
            """Turn the fill on if `code` is the program's own; remember it if it is a library's."""
            if code.co_filename.startswith(libraries):
                library_callers.add(code)
            elif watch.active:  # not after the undo: a wrapper bound before it may still be called
                watch.undo()  # once on, it stays on: nothing more to watch
                torch.utils.deterministic.fill_uninitialized_memory = True

        def watched(original: Callable[..., Any], sized_first: bool) -> Callable[..., Any]:
            # Mirrors torch.empty / empty_like / empty_strided and Tensor.new_empty / resize_ (torch 2.x).
            def call(*args: Any, **kwargs: Any) -> Any:
                # A tensor of no elements has no memory to read: torch rebuilds every tensor a
                # DataLoader worker sends from `torch.empty((0,))` (torch._utils._rebuild_tensor),
                # and judging its caller cost two audit events and a frame at every batch.
                shape = args[0] if sized_first and args else None
                if not (type(shape) is tuple and len(shape) == 1 and type(shape[0]) is int and shape[0] == 0):
                    try:
                        code = getframe(1).f_code
                        if code not in library_callers:
                            judge(code)
                    except Exception as exc:  # noqa: BLE001
                        session.hook_failed("the uninitialised-memory watch", exc)
                return original(*args, **kwargs)

            call.__name__ = getattr(original, "__name__", "empty")
            call.__doc__ = getattr(original, "__doc__", None)
            return call

        for owner, names in ((torch, ("empty", "empty_like", "empty_strided")),
                             (torch.Tensor, ("new_empty", "new_empty_strided", "resize_"))):
            for name in names:
                original = getattr(owner, name, None)
                if original is not None:  # torch.empty and empty_strided take the size first
                    watch.setattr(owner, name, watched(original, sized_first=owner is torch and name != "empty_like"))

    def uninstall(self) -> None:
        self._installed = False
        self._empty_watch.undo()
        if self._applied:
            from detrun.patches.patch_policy import remove_policy

            remove_policy()
            self._applied = False
