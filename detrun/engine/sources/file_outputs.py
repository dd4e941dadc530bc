"""Output files: a digest of every version of every file the program writes under its directory; compared on replay.

Python's audit hook sees the program open a file for writing (builtins.open, os.open, and numpy,
csv, json through them), rename one (`os.rename`, `os.replace`: the write-then-rename pattern of an
atomic save) and remove one. torch.save writes through C++ (no audit event), so torch.save is
wrapped. The audit hook has no close event: a written file is digested when the program next
opens that path (so a checkpoint overwritten every epoch is digested once per version; a reopen
in append mode continues the same version) and at the end of the run for the rest.

A digest compares checkpoints by tensor, text by masked line and other files by sha256
(engine/checkpoint_digest.py). The n-th version of a path in the replay is compared with the n-th
in the recording: a tensor that differs is an output check that differed
(`output runs/last.pt: tensor 'conv1.weight' differs`); a differing text line (it may hold a
time-derived seed or a duration the mask does not know: detrun does not replay the clock), opaque
binary file, checkpoint's non-tensor value, or a file only one of the runs wrote is a cause.
A file opened for appending that existed before (a log earlier runs wrote) is compared from where
the run started appending; one that the recording created but the replay found (the recording's
own, as a replay in place does) or the other way round is a cause, not a divergence.

Only files under the run's directory are outputs: files elsewhere (the temporary directory's
random names, a cache) are not compared. Not seen: files written by DataLoader workers or other
processes, and by writers that bypass Python's open (safetensors' Rust writer, h5py's C library).

    `file.output` — {path, version, size, format, tensors? | lines?, text? | sha256?}
"""
from __future__ import annotations

import os
import sys
import _thread
from typing import TYPE_CHECKING, Any

from detrun.engine.audit_events import watch_audit_events
from detrun.engine.compiler_frames import file_opened_by_compiler
from detrun.engine.file_fingerprint import detrun_paths, program_file, trace_path
from detrun.engine.patcher import Patcher
from detrun.engine.replay_backups import ReplayBackups
from detrun.trace.registry import FILE_OUTPUT

if TYPE_CHECKING:
    from detrun.engine.session import Session

MAX_FILES = 10_000  # distinct written paths followed
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_MOVES = ("os.rename", "os.replace")
_REMOVES = ("os.remove", "os.unlink")
_EVENTS = frozenset(("open", *_MOVES, *_REMOVES))
_active: FileOutputSource | None = None
_local = _thread._local()  # set while detrun digests a file: its own opens are not the program's


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Route the program's writes to the active source (never raises; called for the _EVENTS only)."""
    source = _active
    if source is None or getattr(_local, "busy", False):
        return
    try:
        if event == "open":
            path, mode, flags = args[0], args[1], args[2]
            if isinstance(path, int):
                return
            if isinstance(mode, str):
                source.opened(path, any(c in mode for c in "wax+"), appending="a" in mode, replacing="w" in mode)
            else:
                writing = isinstance(flags, int) and bool(flags & _WRITE_FLAGS)
                source.opened(path, writing, appending=writing and bool(flags & os.O_APPEND),
                              replacing=writing and bool(flags & os.O_TRUNC))
        elif event in _MOVES:
            source.moved(args[0], args[1])
        else:
            source.removed(args[0])
    except Exception as exc:  # noqa: BLE001 - an audit hook must never break the program's own call
        if source.session is not None:
            source.session.hook_failed("the file output hook", exc)




class FileOutputSource:
    """Digest each version of each file the program writes; compare them on replay."""

    def __init__(self) -> None:
        self.session: Session | None = None
        self._patcher = Patcher()
        self._lock = _thread.allocate_lock()
        self._cwd = ""
        self._ignored: tuple[str, ...] = ()
        self._pending: set[str] = set()  # written, not digested yet
        self._offsets: dict[str, int] = {}  # a file the run appends to that existed: where its part starts
        self._versions: dict[str, int] = {}  # path -> versions digested
        self._recorded: dict[tuple[str, int], dict[str, Any]] = {}
        self._compared: set[tuple[str, int]] = set()
        self._backups: ReplayBackups | None = None

    def install(self, session: Session) -> None:
        global _active
        if self.session is not None:
            return
        self.session = session
        self._cwd = os.getcwd()
        trace_file = session.settings.get("trace_path") if session.recording else getattr(session.trace, "path", None)
        self._ignored, self._own_files = detrun_paths(session.scratch_dir, trace_file)
        if not session.recording:
            for payload in session.take_all(FILE_OUTPUT):
                self._recorded[(payload["path"], payload["version"])] = payload
            if session.scratch_dir and not session.settings.get("outputs_in_place"):
                self._backups = ReplayBackups(session.scratch_dir, self._cwd)
        session.on_stop(self._finish)
        session.when_imported("torch", self._hook_torch)
        _active = self
        watch_audit_events(_EVENTS, _audit)

    def uninstall(self) -> None:
        global _active
        if _active is self:
            _active = None
        self._patcher.undo()

    def _program_path(self, path: Any) -> str | None:
        """Return the absolute path of a file the program writes under its directory, else None."""
        absolute = program_file(path, self._ignored, self._own_files)
        if absolute is None or not absolute.startswith(self._cwd.rstrip(os.sep) + os.sep) or file_opened_by_compiler():
            return None
        return absolute

    def opened(self, path: Any, writing: bool, appending: bool = False, replacing: bool = False) -> None:
        """Digest the previous version of a path the program reopens; note a new version when it writes."""
        absolute = self._program_path(path)
        if absolute is None:
            return
        if absolute in self._pending and not appending:
            self._digest(absolute)
        if writing:
            self._save_recordings(absolute, content_needed=not replacing)
            if absolute not in self._pending and len(self._versions) + len(self._pending) >= MAX_FILES:
                return  # the same first MAX_FILES paths are compared in record and replay
            with self._lock:
                if appending and absolute not in self._pending and absolute not in self._versions:
                    # A log that earlier runs wrote: this run's output is what it appends.
                    try:
                        self._offsets[absolute] = os.stat(absolute).st_size
                    except OSError:
                        pass
                elif not appending:
                    self._offsets.pop(absolute, None)
                self._pending.add(absolute)

    def moved(self, source_path: Any, destination: Any) -> None:
        """A rename: the written file now has the destination's name (an atomic save)."""
        before, after = self._program_path(source_path), self._program_path(destination)
        if after is not None and after in self._pending:
            self._digest(after)
        if before is not None:
            self._save_recordings(before, content_needed=True)
        if after is not None:
            self._save_recordings(after, content_needed=False)
        with self._lock:
            if before is not None and before in self._pending:
                self._pending.discard(before)
                if after is not None:
                    self._pending.add(after)

    def removed(self, path: Any) -> None:
        """A removed file was a scratch file: nothing of it is left to compare."""
        absolute = self._program_path(path)
        if absolute is not None:
            self._save_recordings(absolute, content_needed=True)
        with self._lock:
            self._pending.discard(absolute)  # type: ignore[arg-type]

    def _hook_torch(self, torch: Any) -> None:
        """torch.save writes through C++ (PyTorchFileWriter): no audit `open` fires, so see it here."""
        original = torch.save
        source = self

        # Mirrors torch.serialization.save(obj, f, pickle_module, pickle_protocol, _use_new_zipfile_serialization,
        # _disable_byteorder_record) (torch 2.x): only the path argument is looked at.
        def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
            path = f if isinstance(f, (str, bytes, os.PathLike)) else None
            if path is not None:
                try:
                    source.opened(path, False)  # digest the version this call replaces
                    absolute = source._program_path(path)
                    if absolute is not None:
                        source._save_recordings(absolute, content_needed=False)
                except Exception as exc:  # noqa: BLE001
                    if source.session is not None:
                        source.session.hook_failed("torch.save (file outputs)", exc)
            result = original(obj, f, *args, **kwargs)
            if path is not None:
                try:
                    source.opened(path, True)
                except Exception as exc:  # noqa: BLE001
                    if source.session is not None:
                        source.session.hook_failed("torch.save (file outputs)", exc)
            return result

        save.__doc__ = original.__doc__
        save.__wrapped__ = original  # type: ignore[attr-defined]
        self._patcher.setattr(torch, "save", save)

    def _save_recordings(self, absolute: str, content_needed: bool) -> None:
        """On replay, save the file about to change so that the recording's version is put back at the end."""
        if self._backups is None:
            return
        _local.busy = True
        try:
            self._backups.before_change(absolute, content_needed)
        except OSError as exc:
            if self.session is not None:
                self.session.hook_failed(f"saving {trace_path(absolute, self._cwd)} before the replay changes it", exc)
        finally:
            _local.busy = False

    def _digest(self, absolute: str) -> None:
        """Digest one finished version of a written file; record it, or compare it with the recording's."""
        with self._lock:
            if absolute not in self._pending:
                return
            self._pending.discard(absolute)
            version = self._versions[absolute] = self._versions.get(absolute, 0) + 1
        session = self.session
        if session is None:
            return
        name = trace_path(absolute, self._cwd)
        # start-up: the digests (zipfile, json, hashlib) load with the first written file, not before the script
        from detrun.engine.checkpoint_digest import digest_file, first_difference

        _local.busy = True
        try:
            digest = digest_file(absolute, self._offsets.get(absolute, 0))
            if absolute in self._offsets:
                digest["appended"] = True
        except OSError:
            return  # removed or unreadable: nothing to compare
        except Exception as exc:  # noqa: BLE001
            session.hook_failed(f"digesting the written file {name}", exc)
            return
        finally:
            _local.busy = False
        if session.recording:
            session.emit(FILE_OUTPUT, {"path": name, "version": version, **digest})
            return
        recorded = self._recorded.get((name, version))
        if recorded is None:
            session.mismatch(FILE_OUTPUT, f"the replay wrote {name}" + (f" (version {version})" if version > 1 else "")
                             + ", which the recording did not write")
            return
        self._compared.add((name, version))
        difference = first_difference(recorded, digest)
        if difference is None:
            if recorded.get("tensors") is not None and recorded.get("format") != "zip":
                session.count_check("output files")  # only a tensor comparison can fail the verdict
            return
        message, trusted = difference
        if bool(recorded.get("appended")) != bool(digest.get("appended")):
            # The script appends to a log it found, or creates it: which depends on what earlier runs left.
            trusted = False
            message += (f" (the recording {'appended to' if recorded.get('appended') else 'created'} it, the replay "
                        f"{'appended to' if digest.get('appended') else 'created'} it: replay in a copy of the "
                        "directory as it was before the recording)")
        if trusted:
            session.count_check("output files")
            session.diverge(FILE_OUTPUT, f"output {name}: {message}", check="output")
        else:
            session.mismatch(FILE_OUTPUT, f"output {name}: {message}")

    def _finish(self) -> None:
        """Digest what is still pending; on replay, name the recorded outputs the replay never wrote."""
        for absolute in sorted(self._pending):
            self._digest(absolute)
        session = self.session
        if session is None or session.recording:
            return
        self._put_back(session)
        missing = sorted(key for key in self._recorded if key not in self._compared)
        if missing and (session.trace is None or session.trace.complete):
            name, version = missing[0]
            more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
            session.mismatch(FILE_OUTPUT, f"the recording wrote {name}"
                             + (f" (version {version})" if version > 1 else "") + f", the replay did not{more}")

    def _put_back(self, session: Session) -> None:
        """Restore the recording's files the replay changed; hand the replay's to --outputs-dir."""
        if self._backups is None:
            return
        outputs_dir = session.settings.get("outputs_dir")
        _local.busy = True
        try:
            moved, failed = self._backups.restore(outputs_dir if isinstance(outputs_dir, str) else None)
        finally:
            _local.busy = False
        if failed:
            print(f"detrun: warning: could not put back {len(failed)} file(s) the replay changed: "
                  f"{', '.join(trace_path(p, self._cwd) for p in failed[:3])}", file=sys.stderr)
        if moved and not session.quiet:
            print(f"detrun: the replay's {moved} written file(s) are in {outputs_dir}", file=sys.stderr)
