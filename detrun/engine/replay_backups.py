"""A replay leaves the recording's files as they were: what it overwrites is put back when it ends.

A replay runs the script where it was recorded, so it writes the same checkpoints and logs over
the recording's. Redirecting its writes elsewhere would change what the script sees (its
`os.path.exists("runs/last.pt")` checks, its listings), so the script writes in place, as without
detrun, and detrun puts the recording's files back at the end: before the replay first overwrites,
truncates, renames onto or removes an existing file under the run's directory, that file is moved
(or, when the script still needs its content, copied) into detrun's private scratch directory; at
the end, after the replay's files were compared, each is moved to `replay --outputs-dir` (or
deleted), and the recording's version returns. Files the replay created are removed the same way.

Nothing of the recording's is lost when a replay dies: every saved file is listed in a manifest
beside it as it is saved, and the launcher (launch.py) puts whatever a dead child left back
(restore_leftovers) before it removes the scratch directory; a scratch directory that still holds
saved files is never swept (child_process._sweep_stale_scratch), and the next run names it.
Each process (a rank, the script) saves into a directory of its own.
"""
from __future__ import annotations

import json
import os

BACKUPS_DIR = "replaced"
MANIFEST = "manifest.jsonl"


class ReplayBackups:
    """Save the files a replay is about to change; restore them, and hand the replay's own to a directory."""

    def __init__(self, scratch_dir: str, cwd: str) -> None:
        self._dir = os.path.join(scratch_dir, BACKUPS_DIR, str(os.getpid()))
        self._cwd = cwd
        self._saved: dict[str, str | None] = {}  # absolute path -> its saved version, None: it did not exist

    def before_change(self, absolute: str, content_needed: bool) -> None:
        """Save a file the replay is about to change, once; `content_needed`: copy it, the script reads on."""
        if absolute in self._saved:
            return
        if not os.path.lexists(absolute):
            self._saved[absolute] = None
            return
        if not os.path.isfile(absolute) or os.path.islink(absolute):
            return  # a directory or a link: left to the script
        os.makedirs(self._dir, mode=0o700, exist_ok=True)
        backup = os.path.join(self._dir, str(len(self._saved)))
        # Listed before it moves: a replay killed at any point leaves its launcher what to put back.
        with open(os.path.join(self._dir, MANIFEST), "a", encoding="utf-8") as manifest:
            manifest.write(json.dumps({"path": absolute, "backup": backup}) + "\n")
        if not content_needed:
            try:
                os.rename(absolute, backup)  # the script replaces it anyway: no copy on the same file system
                self._saved[absolute] = backup
                return
            except OSError:
                pass
        import shutil  # here: every launcher imports this module at its end (holds_backups), start-up

        shutil.copy2(absolute, backup)
        self._saved[absolute] = backup

    def restore(self, outputs_dir: str | None) -> tuple[int, list[str]]:
        """Put the recording's files back; move the replay's to `outputs_dir` (or remove them).

        Return how many of the replay's files were handed over, and the paths that could not be restored.
        """
        import shutil

        moved, failed = 0, []
        for absolute, backup in self._saved.items():
            try:
                if os.path.isfile(absolute):
                    if outputs_dir is not None:
                        relative = os.path.relpath(absolute, self._cwd)
                        target = os.path.join(outputs_dir, relative)
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        shutil.move(absolute, target)
                        moved += 1
                    else:
                        os.remove(absolute)
                if backup is not None:
                    shutil.move(backup, absolute)
            except OSError:
                failed.append(absolute)
        self._saved.clear()
        if not failed:
            shutil.rmtree(self._dir, ignore_errors=True)
        return moved, failed


def restore_leftovers(scratch_dir: str) -> list[str]:
    """Put back the recording's files that a replay which died had saved away; return their paths.

    Called by the launcher after its child ended, before the scratch directory is removed. Only
    moves a saved file back over the path it came from; what the dead replay created is left.
    """
    restored: list[str] = []
    root = os.path.join(scratch_dir, BACKUPS_DIR)
    try:
        owners = os.listdir(root)
    except OSError:
        return restored
    for owner in owners:
        try:
            with open(os.path.join(root, owner, MANIFEST), encoding="utf-8") as manifest:
                entries = [json.loads(line) for line in manifest if line.strip()]
        except (OSError, ValueError):
            continue
        import shutil

        for entry in entries:
            backup, path = entry.get("backup"), entry.get("path")
            if isinstance(backup, str) and isinstance(path, str) and os.path.isfile(backup):
                try:
                    shutil.move(backup, path)
                    restored.append(path)
                except OSError:
                    return restored  # left in the scratch directory, which is then kept (holds_backups)
        os.unlink(os.path.join(root, owner, MANIFEST))
    return restored


def holds_backups(scratch_dir: str) -> bool:
    """Return whether a scratch directory still holds files a replay saved away (never delete it then)."""
    root = os.path.join(scratch_dir, BACKUPS_DIR)
    try:
        return any(os.path.exists(os.path.join(root, owner, MANIFEST)) for owner in os.listdir(root))
    except OSError:
        return False
