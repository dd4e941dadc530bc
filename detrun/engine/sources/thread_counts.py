"""Thread counts: torch's intra-op and inter-op pools, recorded and pinned on replay.

The thread environment variables (OMP_NUM_THREADS, MKL_NUM_THREADS, ...) are pinned by the
launcher before the interpreter starts; this source pins what torch chose from them.
"""
from __future__ import annotations

from typing import Any
from detrun.trace.registry import TORCH_THREADS as KIND  # the kind, its payload schema and version



class ThreadsSource:
    """Record torch's thread pool sizes at import and restore them on replay."""

    def __init__(self) -> None:
        self._installed = False

    def install(self, session: Any) -> None:
        if self._installed:
            return
        self._installed = True
        session.when_imported("torch", lambda torch: self._hook(session, torch))

    def _hook(self, session: Any, torch: Any) -> None:
        observed = [torch.get_num_threads(), torch.get_num_interop_threads()]
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
            session.diverge(KIND, f"torch inter-op threads recorded {interop}, got {observed[1]} "
                                  "and could not be pinned")

    def uninstall(self) -> None:
        self._installed = False

