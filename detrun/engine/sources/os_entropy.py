"""OS entropy: `os.urandom`, `os.getrandom`, and what is built on them (SystemRandom, secrets, uuid4).

Not recorded: the challenge `multiprocessing.connection` sends when two processes connect (a
DataLoader's main process fetches every batch's shared memory that way). Those bytes only
authenticate the connection and never reach the program's values; recording them cost a frame walk
and an event per batch, and their order between threads is the OS's.
"""
from __future__ import annotations

import os
import random
import sys
from typing import TYPE_CHECKING, Any, Callable

from detrun.engine.patcher import Patcher
from detrun.trace.registry import OS_ENTROPY as KIND  # the kind, its payload schema and version

if TYPE_CHECKING:
    from detrun.engine.session import Session



_CONNECTION_MODULE = "multiprocessing.connection"  # its authentication challenge (see above)


class EntropySource:
    """Record every byte string the OS hands out, and hand the same bytes back on replay."""

    def __init__(self) -> None:
        self._patcher = Patcher()

    def install(self, session: Session) -> None:
        if self._patcher.active:
            return

        def wrap(original: Callable[..., bytes], name: str) -> Callable[..., bytes]:
            def entropy(size: int, *args: Any) -> bytes:
                # The real call runs first so that bad arguments raise exactly as they would.
                data = original(size, *args)
                if sys._getframe(1).f_globals.get("__name__") == _CONNECTION_MODULE:
                    return data
                try:
                    return session.exchange(KIND, data, f"{name}({size})",
                                            accept=lambda v: isinstance(v, bytes) and len(v) == len(data))
                except Exception as exc:  # noqa: BLE001
                    session.hook_failed(name, exc)
                    return data

            entropy.__name__ = original.__name__
            entropy.__doc__ = original.__doc__
            return entropy

        urandom = wrap(os.urandom, "os.urandom")
        self._patcher.setattr(os, "urandom", urandom)
        # random.py binds `from os import urandom as _urandom`; SystemRandom and secrets read it.
        self._patcher.setattr(random, "_urandom", urandom)
        if hasattr(os, "getrandom"):
            self._patcher.setattr(os, "getrandom", wrap(os.getrandom, "os.getrandom"))

    def uninstall(self) -> None:
        self._patcher.undo()
