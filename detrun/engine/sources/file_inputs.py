"""Input files: what the program read, checked when the replay reads it, and kept when the run overwrites it.

A run's result depends on its data and its starting checkpoint as much as on its RNGs. Every file
the program opens for reading (builtins.open, os.open, and through them numpy, torch.load, PIL,
csv, pandas' Python engine) is seen by Python's audit hook `open`. The first open of each version
of a file (a new size, mtime or inode) records its fingerprint (engine/file_fingerprint.py),
hashed in a background thread so that the program's read is not held up. The interpreter's and the
libraries' files, `.py`/`.pyc` imports, /proc, /sys, /dev, detrun's own files, a JIT compiler's
cache, and files the run itself wrote earlier are not inputs.

On replay each input is fingerprinted when the program opens it; a changed file is noted as a
cause, so a later divergence reads `likely cause: data/train.csv changed since the recording
(sha256 3f2a… → 9c01…, 1 line differs)`.

A run must not break its own replay: when it overwrites or removes a file it read (a resumed
checkpoint), the version it read is copied, before the write, into `<trace>.inputs/<sha256>` beside
the trace, up to `record --keep-inputs` bytes in all. The replay's reads of that path are then
served from the copy (builtins.open/io.open are redirected, only for such paths, after the copy's
sha256 is verified) whenever the file in place no longer matches. Beyond the limit the replay says
which file to restore and its sha256. The copy's location comes from the trace path the user gave,
never from the trace's content; a trace's paths are only ever matched against the program's own.

Not seen: files opened in DataLoader worker processes or other child processes, and C/C++/Rust
readers that bypass Python's open (h5py, TFRecord readers, safetensors' mmap).

    `file.input` — {path, read, size, mtime_ns, sha256, sampled, lines?, step?}
    `file.kept` — {path, read, sha256, kept}
"""
from __future__ import annotations

import builtins
import io
import os
import queue
import shutil
import stat as stat_module
import _thread
from typing import TYPE_CHECKING, Any, Callable

from detrun.engine.audit_events import watch_audit_events
from detrun.engine.compiler_frames import file_opened_by_compiler
from detrun.engine.file_fingerprint import (Fingerprint, describe_change, detrun_paths, fingerprint, full_sha256,
                                            program_file, trace_path)
from detrun.engine.patcher import Patcher
from detrun.trace.registry import FILE_INPUT, FILE_KEPT

if TYPE_CHECKING:
    from detrun.engine.session import Session

DEFAULT_KEEP_BYTES = 1 << 30
MAX_FILES = 50_000  # distinct input paths followed (a dataset of small files: 10 MB of trace)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_REPLACING = {"os.rename": 1, "os.replace": 1, "os.remove": 0, "os.unlink": 0}  # event -> index of the path replaced
_active: FileInputSource | None = None
_local = _thread._local()  # detrun's own opens, and an open the redirecting wrapper already checked


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Route the program's opens, renames and removals to the active source (never raises).

    engine.audit_events calls it for "open" and the _REPLACING events only.
    """
    source = _active
    if source is None:
        return
    if getattr(_local, "busy", False) or _thread.get_ident() == source.worker_ident:
        return
    try:
        if event == "open":
            path, mode, flags = args[0], args[1], args[2]
            if isinstance(path, int):
                return
            if isinstance(mode, str):
                writing = any(c in mode for c in "wax+")
            else:
                writing = isinstance(flags, int) and bool(flags & _WRITE_FLAGS)
            source.opened(path, writing)
        else:
            source.opened(args[_REPLACING[event]], True)
    except Exception as exc:  # noqa: BLE001 - an audit hook must never break the program's own call
        if source.session is not None:
            source.session.hook_failed("the file input hook", exc)




class _Version:
    """One version of an input: recorded, or awaiting its fingerprint in the background."""

    def __init__(self, absolute: str, read: int, step: int) -> None:
        self.absolute = absolute
        self.read = read
        self.step = step
        self.claimed = False
        self.done = _thread.allocate_lock()
        self.done.acquire()
        self.fingerprint: Fingerprint | None = None
        self.key: tuple[int, int, int] = (0, 0, 0)  # size, mtime, inode when it was opened


class FileInputSource:
    """Record the program's input files; check them on replay; keep the ones the run overwrites."""

    def __init__(self) -> None:
        self.session: Session | None = None
        self.worker_ident: int | None = None
        self._patcher = Patcher()
        self._lock = _thread.allocate_lock()
        self._ignored: tuple[str, ...] = ()
        self._cwd = ""
        self._sidecar = ""
        self._reads: dict[str, int] = {}  # absolute path -> read opens so far
        self._written: set[str] = set()  # paths the run wrote: reading them again is no input
        self._versions: dict[str, _Version] = {}  # record: the last version read of each path
        self._queue: queue.SimpleQueue[_Version | None] = queue.SimpleQueue()
        self._worker_done = _thread.allocate_lock()
        self._finished = False  # no worker starts after the end-of-run check
        self._keep_left = 0
        self._recorded: dict[str, list[dict[str, Any]]] = {}  # replay: path -> versions, by read ordinal
        self._kept: dict[tuple[str, int], dict[str, Any]] = {}
        self._checked: dict[str, tuple[int, tuple[int, int, int]]] = {}  # replay: path -> (read, stat key)
        self._serve: dict[str, str] = {}  # replay: absolute path -> verified kept copy to read instead
        self._verified: set[str] = set()

    def install(self, session: Session) -> None:
        global _active
        if self.session is not None:
            return
        self.session = session
        self._cwd = os.getcwd()
        trace_file = session.settings.get("trace_path") if session.recording else getattr(session.trace, "path", None)
        self._sidecar = os.path.abspath(str(trace_file)) + ".inputs" if trace_file else ""
        self._ignored, self._own_files = detrun_paths(session.scratch_dir, trace_file)
        if session.recording:
            keep = session.settings.get("keep_inputs", DEFAULT_KEEP_BYTES)
            self._keep_left = keep if isinstance(keep, int) else DEFAULT_KEEP_BYTES
        else:
            self._load_recording(session)
        session.on_stop(self._finish)
        session.when_imported("torch", self._hook_torch)
        _active = self
        watch_audit_events(("open", *_REPLACING), _audit)

    def uninstall(self) -> None:
        global _active
        if _active is self:
            _active = None
        self._patcher.undo()

    # ----------------------------------------------------------------- the program's opens

    def _program_path(self, path: Any) -> str | None:
        """Return the absolute path of a file the program itself opened, or None for everything else."""
        absolute = program_file(path, self._ignored, self._own_files)
        if absolute is None or file_opened_by_compiler():
            return None
        return absolute

    def opened(self, path: Any, writing: bool) -> str | None:
        """Handle an open (or a rename/removal when `writing`); return a kept copy to read instead, if any."""
        absolute = self._program_path(path)
        if absolute is None:
            return None
        if writing:
            if self.session is not None and self.session.recording:
                self._keep_before_overwrite(absolute)
            self._written.add(absolute)
            return None
        if absolute in self._written:
            return None
        with self._lock:
            if absolute not in self._reads and len(self._reads) >= MAX_FILES:
                return None  # the same first MAX_FILES paths are checked in record and replay
            read = self._reads[absolute] = self._reads.get(absolute, 0) + 1
        if self.session is not None and self.session.recording:
            self._record_read(absolute, read)
            return None
        return self._check_read(absolute, read)

    def _hook_torch(self, torch: Any) -> None:
        """torch.save writes through C++ (PyTorchFileWriter): no audit `open` fires, so see it here."""
        original = torch.save
        source = self

        # Mirrors torch.serialization.save(obj, f, pickle_module, pickle_protocol, _use_new_zipfile_serialization,
        # _disable_byteorder_record) (torch 2.x): only the path argument is looked at.
        def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(f, (str, bytes, os.PathLike)):
                try:
                    source.opened(f, True)
                except Exception as exc:  # noqa: BLE001
                    if source.session is not None:
                        source.session.hook_failed("torch.save (file inputs)", exc)
            return original(obj, f, *args, **kwargs)

        save.__doc__ = original.__doc__
        save.__wrapped__ = original  # type: ignore[attr-defined]
        self._patcher.setattr(torch, "save", save)

    # ----------------------------------------------------------------- record

    def _record_read(self, absolute: str, read: int) -> None:
        try:
            info = os.stat(absolute)
        except OSError:
            return  # the open itself fails as it would without detrun
        if not stat_module.S_ISREG(info.st_mode):
            return
        key = (info.st_size, info.st_mtime_ns, info.st_ino)
        with self._lock:
            last = self._versions.get(absolute)
            if last is not None and last.key == key:
                return
            version = _Version(absolute, read, self.session.steps + 1 if self.session else 0)
            version.key = key
            self._versions[absolute] = version
            if self.worker_ident is None and not self._finished:
                # At the first input, not at install: a run that reads no file starts no thread, and
                # does not wait for one at its end (start-up). Its ident is set before it has work,
                # so the audit hook never takes the worker's own opens for the program's.
                self._worker_done.acquire()
                self.worker_ident = _thread.start_new_thread(self._work, ())
        self._queue.put(version)

    def _work(self) -> None:
        """Fingerprint the queued versions off the program's critical path (a `_thread`: invisible to threading)."""
        try:
            while (version := self._queue.get()) is not None:
                self._settle(version)
        finally:
            self._worker_done.release()

    def _settle(self, version: _Version) -> None:
        """Fingerprint and record one version, unless another thread already does; wait for it then."""
        with self._lock:
            mine = not version.claimed
            version.claimed = True
        if not mine:
            version.done.acquire()
            version.done.release()
            return
        try:
            version.fingerprint = fingerprint(version.absolute)
        except OSError:
            pass  # removed before it could be read: nothing the replay can check
        except Exception as exc:  # noqa: BLE001
            if self.session is not None:
                self.session.hook_failed("fingerprinting an input file", exc)
        finally:
            version.done.release()
        found = version.fingerprint
        if found is not None and self.session is not None:
            payload: dict[str, Any] = {"path": trace_path(version.absolute, self._cwd), "read": version.read,
                                       "size": found.size, "mtime_ns": found.mtime_ns, "sha256": found.sha256,
                                       "sampled": found.sampled, "step": version.step}
            if found.lines is not None:
                payload["lines"] = found.lines
            self.session.emit(FILE_INPUT, payload)

    def _keep_before_overwrite(self, absolute: str) -> None:
        """Before the run overwrites or removes a file it read, keep the version it read (within the limit)."""
        with self._lock:
            version = self._versions.pop(absolute, None)
        if version is None or absolute in self._written:
            return
        _local.busy = True
        try:
            self._settle(version)
            if version.fingerprint is None or self.session is None:
                return
            sha = full_sha256(absolute)
            kept = bool(self._sidecar) and version.fingerprint.size <= self._keep_left
            if kept:
                os.makedirs(self._sidecar, exist_ok=True)
                target = os.path.join(self._sidecar, sha)
                if not os.path.exists(target):
                    partial = f"{target}.{os.getpid()}.partial"
                    shutil.copyfile(absolute, partial)
                    os.replace(partial, target)
                self._keep_left -= version.fingerprint.size
            self.session.emit(FILE_KEPT, {"path": trace_path(absolute, self._cwd), "read": version.read,
                                          "sha256": sha, "kept": kept})
        except OSError as exc:
            if self.session is not None:
                self.session.hook_failed(f"keeping the input {trace_path(absolute, self._cwd)}", exc)
        finally:
            _local.busy = False

    def _finish(self) -> None:
        with self._lock:
            self._finished = True
        if self.session is not None and self.session.recording and self.worker_ident is not None:
            self._queue.put(None)
            self._worker_done.acquire()
            self.worker_ident = None

    # ----------------------------------------------------------------- replay

    def _load_recording(self, session: Session) -> None:
        for payload in session.take_all(FILE_INPUT):
            self._recorded.setdefault(payload["path"], []).append(payload)
        for versions in self._recorded.values():
            versions.sort(key=lambda p: p["read"])
        for payload in session.take_all(FILE_KEPT):
            self._kept[(payload["path"], payload["read"])] = payload
        if any(p["kept"] for p in self._kept.values()):
            self._redirect_reads()

    def _check_read(self, absolute: str, read: int) -> str | None:
        """Check the file the replay opens against the recording; return the kept copy to read instead, if any."""
        session = self.session
        assert session is not None
        name = trace_path(absolute, self._cwd)
        versions = self._recorded.get(name)
        if not versions:
            if read == 1 and os.path.isfile(absolute):
                session.mismatch(FILE_INPUT, f"the replay read {name}, which the recording did not read")
            return None
        expected = next((v for v in reversed(versions) if v["read"] <= read), versions[0])
        try:
            info = os.stat(absolute)
            key = (info.st_size, info.st_mtime_ns, info.st_ino)
        except OSError:
            key = (-1, -1, -1)
        if self._checked.get(absolute) == (expected["read"], key):
            return self._serve.get(absolute)
        self._checked[absolute] = (expected["read"], key)
        self._serve.pop(absolute, None)
        _local.busy = True
        try:
            current = fingerprint(absolute) if key[0] >= 0 else None
        except OSError:
            current = None
        finally:
            _local.busy = False
        if current is not None and current.sha256 == expected["sha256"]:
            return None
        kept = self._kept.get((name, expected["read"]))
        if kept is not None and kept["kept"]:
            copy = self._verified_copy(kept["sha256"])
            if copy is not None:
                self._serve[absolute] = copy
                return copy
        if current is None:
            change = f"{name} is missing (the recording read it: sha256 {expected['sha256'][:4]}…)"
        else:
            change = describe_change(name, expected["sha256"], current, expected.get("lines"))
        if kept is not None:
            change += (f"; the recording overwrote it after reading it: restore the version it read "
                       f"(sha256 {kept['sha256']})" + ("" if kept["kept"] else
                                                        ", which was beyond record --keep-inputs"))
        session.mismatch(FILE_INPUT, change)
        return None

    def _verified_copy(self, sha: str) -> str | None:
        """Return the kept copy named by `sha` in the trace's sidecar directory if its content has that sha256."""
        if not self._sidecar:
            return None
        copy = os.path.join(self._sidecar, sha)  # the schema allows 64 hex digits only: no path in there
        if copy in self._verified:
            return copy
        _local.busy = True
        try:
            good = full_sha256(copy) == sha
        except OSError:
            good = False
        finally:
            _local.busy = False
        if good:
            self._verified.add(copy)
            return copy
        return None

    def _redirect_reads(self) -> None:
        """Serve reads of the overwritten inputs from their kept copies: wrap builtins.open and io.open."""
        original: Callable[..., Any] = builtins.open
        source = self
        paths = {os.path.abspath(os.path.join(self._cwd, path)) for path, _ in self._kept}

        # Mirrors io.open(file, mode='r', buffering=-1, encoding=None, errors=None, newline=None, closefd=True,
        # opener=None) (CPython 3.10-3.13): only a read of a kept path is redirected.
        def open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:  # noqa: A001
            copy = None
            checked = False
            if (isinstance(file, (str, os.PathLike)) and isinstance(mode, str) and not any(c in mode for c in "wax+")
                    and not getattr(_local, "busy", False)):
                try:
                    if os.path.abspath(os.fspath(file)) in paths:
                        copy = source.opened(file, False)
                        checked = True
                except Exception as exc:  # noqa: BLE001
                    if source.session is not None:
                        source.session.hook_failed("reading a kept input", exc)
            if not checked:
                return original(file, mode, *args, **kwargs)
            _local.busy = True  # this open was checked here: the audit hook leaves it alone
            try:
                return original(copy or file, mode, *args, **kwargs)
            finally:
                _local.busy = False

        open.__doc__ = original.__doc__
        self._patcher.setattr(builtins, "open", open)
        self._patcher.setattr(io, "open", open)
