"""File-listing order: `os.listdir` and `os.scandir`, and through them `os.walk`, `glob` and `pathlib`.

Directory order depends on the file system (ext4 hashes names, tmpfs keeps creation order), so
the same data in another directory or on another machine lists differently. Record the names in
the order they were returned; on replay return that order when the same set of names is present,
and report a divergence naming the added and missing names when it is not — never reorder
silently. `os.walk`, `glob.glob`/`iglob` and `pathlib.Path.glob`/`rglob` list through
`os.scandir`, and `Path.iterdir` through `os.listdir` (CPython 3.10-3.13), so two hooks cover all.

A listing of a directory that the run itself created or wrote into (a checkpoint directory, a
logger's version folder) depends on what earlier runs left there, not on the data: it is not a
mismatch at all. Which directories those are is known only at the end (a run may list a directory
before writing into it), so a replay holds listing differences back until then, and drops those
of directories that the recording or the replay created or wrote into. Writes are seen through
Python's audit hook (`open` for writing, `os.mkdir`, `os.rename`, `os.remove`, ...); an audit hook
cannot be removed, so it does nothing once the session is over. A JIT compiler's listings of its
own cache (see compiler_frames.py) are neither recorded nor compared.

    `fs.listing` — [site, [names in order]]
    `fs.written` — [directories the run created or wrote into] (at the end of the run)
"""
from __future__ import annotations

import os
import sys
import sysconfig
from typing import TYPE_CHECKING, Any, Iterator

from detrun.engine.audit_events import watch_audit_events
from detrun.engine.patcher import Patcher
from detrun.engine.compiler_frames import called_by_compiler
from detrun.engine.call_sites import call_site
from detrun.trace.registry import (  # the kinds, their payload schemas and versions
    FS_LISTING as KIND,
    FS_WRITTEN as WRITTEN_KIND,
)

if TYPE_CHECKING:
    from detrun.engine.session import Session

_MAX_WRITTEN = 10_000
_WRITE_EVENTS = {"os.mkdir": 0, "os.rename": 1, "os.replace": 1, "os.remove": 0, "os.rmdir": 0, "os.link": 1,
                 "os.symlink": 1, "shutil.copyfile": 1, "shutil.move": 1}  # event -> index of the path written
_active_watch: FsOrderSource | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Note the directories the program writes into (an audit hook: cheap, and never raises)."""
    watch = _active_watch
    if watch is None:
        return
    try:
        if event == "open":
            path, mode, flags = args[0], args[1], args[2]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing and isinstance(path, (str, bytes, os.PathLike)):
                watch.note_write(os.path.dirname(os.path.abspath(os.fsdecode(path))))
        elif event in _WRITE_EVENTS:
            path = args[_WRITE_EVENTS[event]]
            if isinstance(path, (str, bytes, os.PathLike)):
                absolute = os.path.abspath(os.fsdecode(path))
                watch.note_write(os.path.dirname(absolute))
                if event == "os.mkdir":
                    watch.note_write(absolute)
    except Exception:  # noqa: BLE001 - an audit hook must never break the program's own call
        pass

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
        self._session: Session | None = None
        self._written: set[str] = set()
        self._held_back: list[tuple[str, str, int]] = []  # (directory, message, step) until the end

    def note_write(self, directory: str) -> None:
        """Remember a directory the program created or wrote into."""
        if len(self._written) < _MAX_WRITTEN:
            self._written.add(os.path.realpath(directory))

    def install(self, session: Session) -> None:
        global _active_watch
        if self._patcher.active:
            return
        self._session = session
        _active_watch = self
        watch_audit_events(("open", *_WRITE_EVENTS), _audit)
        session.on_stop(self._finish)
        original_listdir = os.listdir
        original_scandir = os.scandir
        source = self

        def order(call: str, path: Any, names: list[Any]) -> list[Any] | None:
            """Return the order to use for these names, or None to keep the current one."""
            observed = [os.fsdecode(n) for n in names]
            if session.recording:
                session.exchange(KIND, observed, call)
                return None
            same_names = True

            def accept(recorded_names: list[str]) -> bool:
                nonlocal same_names
                same_names = sorted(recorded_names) == sorted(observed)
                if not same_names:
                    directory = os.path.realpath(os.fspath(path) if path is not None else ".")
                    source._held_back.append((os.fsdecode(directory), f"{call} at {call_site()} "
                                              f"{_difference(recorded_names, observed)}", session.steps + 1))
                return True  # a difference in names is held back until the end, not reported now

            recorded = session.exchange(KIND, observed, call, accept=accept)
            if not same_names or recorded is observed or recorded == observed:
                return None  # the same order, or other names: keep what the OS returned
            return recorded

        # Mirrors os.listdir(path='.') (CPython 3.10-3.13).
        def listdir(path: Any = None) -> list[Any]:
            names = original_listdir() if path is None else original_listdir(path)
            if _from_plumbing() or _ignored(path) or called_by_compiler(skip=1):
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
            if _from_plumbing() or isinstance(path, int) or _ignored(path) or called_by_compiler(skip=1):
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

    def _finish(self) -> None:
        """Record the written directories, or report the held-back listings of directories nobody wrote."""
        session = self._session
        if session is None:
            return
        if session.recording:
            session.emit(WRITTEN_KIND, sorted(self._written))
            return
        recorded = session.take(WRITTEN_KIND)
        written = self._written | {str(d) for d in recorded} if isinstance(recorded, list) else self._written
        for directory, message, step in self._held_back:
            if directory not in written:
                session.mismatch(KIND, message, step=step)

    def uninstall(self) -> None:
        global _active_watch
        if _active_watch is self:
            _active_watch = None
        self._patcher.undo()
        self._session = None
