"""The determinism policy: deterministic algorithms, no cuDNN autotuning, cuBLAS workspace, op patches.

Record and replay apply the same policy the moment the script imports torch, before anything can
touch CUDA, so the recorded run is itself reproducible. The trace keeps what was applied; a replay
where a patch could not be installed (another torch, say) notes it as a likely cause.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from detrun.trace.registry import POLICY as KIND  # the kind, its payload schema and version

if TYPE_CHECKING:
    from detrun.engine.session import Session

POLICIES = ("strict", "minimal", "off")


class PolicySource:
    """Apply the session's policy when torch is imported; remove it at the end."""

    def __init__(self) -> None:
        self._installed = False
        self._applied = False

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

        applied = apply_policy(name, set(session.settings.get("policy_ops") or ()))
        self._applied = True
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

    def uninstall(self) -> None:
        self._installed = False
        if self._applied:
            from detrun.patches.patch_policy import remove_policy

            remove_policy()
            self._applied = False
