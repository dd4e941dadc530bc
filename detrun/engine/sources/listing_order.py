"""File-listing order: `os.listdir` and `os.scandir`, and through them `os.walk`, `glob` and `pathlib`.

Directory order depends on the file system (ext4 hashes names, tmpfs keeps creation order), so
the same data in another directory or on another machine lists differently. Record the names in
the order they were returned; on replay return that order when the same set of names is present,
and report a divergence naming the added and missing names when it is not — never reorder
silently. `os.walk`, `glob.glob`/`iglob` and `pathlib.Path.glob`/`rglob` list through
`os.scandir`, and `Path.iterdir` through `os.listdir` (CPython 3.10-3.13), so two hooks cover all.
"""
from __future__ import annotations

import os
import sys
import sysconfig
from typing import Any, Iterator

from detrun.engine.patcher import Patcher
from detrun.trace.registry import FS_LISTING as KIND  # the kind, its payload schema and version


# Listings of the interpreter's own trees and of kernel pseudo-file systems are library plumbing,
# not data order; they vary by machine and are left alone.
_IGNORED_PREFIXES = tuple(sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
                                 | {"/proc", "/sys"}))


# Standard-library modules whose listings are the program's own (os.walk, glob, pathlib, shutil);
# a listing made by any other part of the standard library (importlib.metadata scanning sys.path,
# tempfile, ...) is interpreter plumbing.
_LISTING_APIS = {"os.py", "glob.py", "pathlib.py", "shutil.py"}
_STDLIB_DIR = sysconfig.get_paths()["stdlib"]


def _from_plumbing() -> bool:
    """Return whether the listing was requested by the standard library for its own purposes."""
    caller = sys._getframe(2).f_code.co_filename
    if not caller.startswith(_STDLIB_DIR) or "site-packages" in caller:
        return False
    return os.path.basename(caller) not in _LISTING_APIS


def _ignored(path: Any) -> bool:
    try:
        real = os.path.realpath(os.fspath(path) if path is not None else ".")
    except (TypeError, ValueError):
        return True
    if isinstance(real, bytes):
        real = os.fsdecode(real)
    return any(real == prefix or real.startswith(prefix + os.sep) for prefix in _IGNORED_PREFIXES)


def _difference(recorded: list[str], observed: list[str]) -> str:
    """Say which names a listing gained and lost since the recording."""
    added = sorted(set(observed) - set(recorded))
    missing = sorted(set(recorded) - set(observed))
    return f"lists other files than the recording: added {_describe(added)}, missing {_describe(missing)}"


def _describe(names: list[Any], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', …' if len(names) > limit else ''}]"


class _OrderedScandir:
    """A scandir iterator that yields already-collected entries in a chosen order."""

    def __init__(self, entries: list[Any], underlying: Any) -> None:
        self._entries = iter(entries)
        self._underlying = underlying

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return next(self._entries)

    def close(self) -> None:
        self._underlying.close()

    def __enter__(self) -> _OrderedScandir:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FsOrderSource:
    """Record directory listings in the order returned; replay that order for the same names."""

    def __init__(self) -> None:
        self._patcher = Patcher()

    def install(self, session: Any) -> None:
        if self._patcher.active:
            return
        original_listdir = os.listdir
        original_scandir = os.scandir

        def order(call: str, path: Any, names: list[Any]) -> list[Any] | None:
            """Return the order to use for these names, or None to keep the current one."""
            observed = [os.fsdecode(n) for n in names]
            if session.recording:
                session.exchange(KIND, observed, call)
                return None
            recorded = session.exchange(KIND, observed, call, accept=lambda v: sorted(v) == sorted(observed),
                                        explain=lambda v: _difference(v, observed))
            if recorded is observed or recorded == observed:
                return None  # the same order, or a reported difference: keep what the OS returned
            return recorded

        # Mirrors os.listdir(path='.') (CPython 3.10-3.13).
        def listdir(path: Any = None) -> list[Any]:
            names = original_listdir() if path is None else original_listdir(path)
            if _from_plumbing() or _ignored(path):
                return names
            try:
                chosen = order(f"os.listdir({os.fspath(path) if path is not None else '.'!r})", path, names)
                if chosen is None:
                    return names
                by_text = {os.fsdecode(n): n for n in names}
                return [by_text[n] for n in chosen]
            except Exception as exc:  # noqa: BLE001
                session.hook_failed("os.listdir", exc)
                return names

        # Mirrors os.scandir(path='.') (CPython 3.10-3.13).
        def scandir(path: Any = None) -> Any:
            iterator = original_scandir() if path is None else original_scandir(path)
            if _from_plumbing() or isinstance(path, int) or _ignored(path):
                return iterator
            try:
                entries = list(iterator)
                chosen = order(f"os.scandir({os.fspath(path) if path is not None else '.'!r})", path,
                               [e.name for e in entries])
                if chosen is not None:
                    by_name = {os.fsdecode(e.name): e for e in entries}
                    entries = [by_name[n] for n in chosen]
                return _OrderedScandir(entries, iterator)
            except Exception as exc:  # noqa: BLE001
                session.hook_failed("os.scandir", exc)
                return original_scandir() if path is None else original_scandir(path)

        listdir.__doc__ = original_listdir.__doc__
        scandir.__doc__ = original_scandir.__doc__
        self._patcher.setattr(os, "listdir", listdir)
        self._patcher.setattr(os, "scandir", scandir)

    def uninstall(self) -> None:
        self._patcher.undo()
