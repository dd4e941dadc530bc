"""One module per source of nondeterminism, each behind the same small interface.

A source has `install(session)` (idempotent), `uninstall()` (restores the originals in reverse
order) and stable event kind names. Sources never import each other; the session is the only
meeting point.
"""
from __future__ import annotations

from typing import Any, Protocol


class Source(Protocol):
    """The interface every source implements."""

    def install(self, session: Any) -> None:
        """Install the hooks for record or replay (a second call is a no-op)."""

    def uninstall(self) -> None:
        """Restore everything install() changed, last change first."""


def all_sources() -> list[Source]:
    """Return a fresh instance of every source, in installation order."""
    from detrun.replay.sources import entropy, numpy, pyrandom, threads, torch

    return [
        entropy.EntropySource(),
        pyrandom.PyRandomSource(),
        numpy.NumpySource(),
        torch.TorchSource(),
        threads.ThreadsSource(),
    ]
