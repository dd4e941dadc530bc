"""Reversible attribute patches, in the manner of pytest's monkeypatch."""
from __future__ import annotations

from typing import Any


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
