"""Run callbacks right after a module finishes importing, so heavy libraries stay lazy.

detrun never imports torch, numpy or TensorFlow itself: each source asks to be called when the
script imports them, and this finder wraps the module's loader to call it once the module exists.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import importlib.machinery


class ImportWatcher:
    """Run callbacks right after a module finishes importing, so heavy libraries stay lazy.

    A meta path finder by its find_spec alone, as sys.meta_path asks: not an importlib.abc.MetaPathFinder,
    whose module (with importlib.resources behind it) costs over a millisecond of start-up.
    """

    def __init__(self, on_error: Callable[[str, BaseException], None]) -> None:
        self.callbacks: dict[str, list[Callable[[Any], None]]] = {}
        self._on_error = on_error

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.callbacks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original_exec = loader.exec_module

        def exec_module(module: Any) -> None:
            original_exec(module)
            self.fire(fullname, module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec

    def fire(self, fullname: str, module: Any) -> None:
        """Run and forget the callbacks for a module that is now imported."""
        for callback in self.callbacks.pop(fullname, []):
            try:
                callback(module)
            except Exception as exc:  # noqa: BLE001 - a hook failure must not break the import
                self._on_error(f"setting up hooks for {fullname}", exc)


def initialising(module: Any) -> bool:
    """Return whether a module in sys.modules is still executing its own import."""
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))
