"""Reversible attribute patches, in the manner of pytest's monkeypatch."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detrun.engine.session import Session


class _NotSet:
    """Sentinel for an attribute that did not exist before it was patched."""

    def __repr__(self) -> str:
        return "NOTSET"


NOTSET = _NotSet()


class Patcher:
    """Set attributes and remember the originals so they can be restored in reverse order."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any]] = []

    @property
    def active(self) -> bool:
        """Return whether any patch is in place."""
        return bool(self._undo)

    def setattr(self, owner: Any, name: str, value: Any) -> Any:
        """Replace owner.name with value; return the original (NOTSET if there was none)."""
        # Read from __dict__ for classes so an inherited attribute is restored by deletion, not copied down.
        if isinstance(owner, type):
            original = owner.__dict__.get(name, NOTSET)
        else:
            original = getattr(owner, name, NOTSET)
        self._undo.append((owner, name, original))
        setattr(owner, name, value)
        return original

    def undo(self) -> None:
        """Restore every patched attribute, last patch first."""
        while self._undo:
            owner, name, original = self._undo.pop()
            if original is NOTSET:
                try:
                    delattr(owner, name)
                except AttributeError:
                    pass
            else:
                setattr(owner, name, original)


class ImportTimeSource:
    """Base for a source that hooks a library the moment the script imports it (never earlier).

    Subclasses set `module` and implement `hook(session, module)` with `self.patcher`; install is
    idempotent, and uninstall undoes the patches (a pending import hook then does nothing).
    """

    module: str = ""

    def __init__(self) -> None:
        self.patcher = Patcher()
        self._installed = False
        self.imported_before = False  # whether the program had imported the module before install

    def install(self, session: Session) -> None:
        if self._installed:
            return
        self._installed = True
        self.imported_before = self.module in sys.modules
        session.when_imported(self.module, lambda module: self._hook_once(session, module))

    def _hook_once(self, session: Session, module: Any) -> None:
        if self._installed and not self.patcher.active:
            self.hook(session, module)

    def hook(self, session: Session, module: Any) -> None:
        """Install the patches on the freshly imported module."""
        raise NotImplementedError

    def uninstall(self) -> None:
        self._installed = False
        self.patcher.undo()


class TorchStepSource:
    """Base for a source that hooks torch when the script imports it, acts at step ends, and finishes at the end.

    Subclasses implement `_hook(torch)` (which calls `_subscribe()` for the clock's "flags" phase),
    `_on_tick(tick)` and `_finish()`; install is idempotent, and uninstall unsubscribes and undoes
    every patch.
    """

    def __init__(self) -> None:
        self._patcher = Patcher()
        self._installed = False
        self._session: Any = None
        self._torch: Any = None
        self._torch_dir = ""
        self._subscribed = False

    def install(self, session: Any) -> None:
        if self._installed:
            return
        self._installed = True
        self._session = session
        session.when_imported("torch", self._hook)
        session.on_stop(self._finish)

    def uninstall(self) -> None:
        self._installed = False
        if self._subscribed and self._session is not None:
            self._session.clock.unsubscribe(self._on_tick)
        self._subscribed = False
        self._patcher.undo()
        self._session = None

    def _subscribe(self, what: str) -> None:
        """Call `_on_tick` at the end of every step, in the clock's "flags" phase."""
        self._session.clock.subscribe("flags", self._on_tick, what)
        self._subscribed = True

    def _hook(self, torch: Any) -> None:
        raise NotImplementedError

    def _on_tick(self, tick: Any) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError
