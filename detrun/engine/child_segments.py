"""Child processes' share of a session: where their segments and reports go, and how they are merged.

DataLoader workers run sessions of their own. In record mode each writes a trace segment that the
main session appends to the trace; in replay mode each writes a report of its checks that the main
session folds into the verdict. Both live in a private scratch directory, never beside the trace.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import TYPE_CHECKING, Any, Callable

from detrun.engine.verdict import Divergence

if TYPE_CHECKING:
    from detrun.trace import Trace, TraceWriter

# Captured at import, before any source patches os.urandom: the scratch directory's name must never
# appear as the program's entropy.
_os_urandom = os.urandom

# A recorded segment's hook failures, in a file beside it (`<segment><suffix>`) that only a child
# with a failure writes.
FAILURES_SUFFIX = ".failures.json"


class ChildSegments:
    """The part of the Session that deals with DataLoader worker processes (a mixin)."""

    recording: bool
    writer: TraceWriter | None
    trace: Trace | None
    settings: dict[str, Any]
    role: str
    divergences: list[Divergence]
    mismatches: list[Divergence]
    checked: dict[str, int]
    hook_failures: list[str]
    segment_paths: list[str]
    report_paths: list[str]
    _run_stop_callbacks: Callable[[], None]
    uninstall: Callable[[], None]
    mismatch: Callable[..., None]
    count_check: Callable[..., None]
    _unused_events: Callable[[], list[tuple[str, str]]]

    # The private directory (mode 0700) detrun's launcher made for this run's scratch files; set from
    # detrun's own config, never from a trace. None outside the launcher: made on first use then.
    scratch_dir: str | None = None

    def scratch_path(self, name: str) -> str:
        """Return a path in the private scratch directory for a child process's segment or report.

        Never beside the trace: the program's own listings of its directory would see the file.
        """
        if self.scratch_dir is None:
            # Named from the unhooked entropy: tempfile's own names would draw on the program's
            # `random` and shift its recorded seeds (gettempdir() was cached before the hooks).
            self.scratch_dir = os.path.join(tempfile.gettempdir(), f"detrun-{os.getpid()}-{_os_urandom(6).hex()}")
            os.mkdir(self.scratch_dir, 0o700)
        return os.path.join(self.scratch_dir, name)

    def finish_child(self) -> None:
        """Close a child process's session: its segment in record mode, its report in replay mode."""
        self._run_stop_callbacks()
        self.uninstall()
        if self.recording:
            assert self.writer is not None
            partial = self.writer.path
            self.writer.close()
            finished = partial.removesuffix(".partial")
            if self.hook_failures:
                # Beside the segment, before it is published: the main session reads it with the
                # segment, and its end record then says the recording cannot vouch for its replay.
                # Not written: the failure was printed on stderr already.
                _write_child_file(finished + FAILURES_SUFFIX, {"role": self.role, "hook_failures": self.hook_failures})
            os.replace(partial, finished)
            return
        report_path = self.settings.get("report_path")
        if report_path:
            if self.trace is not None and self.trace.complete:
                for kind, message in self._unused_events():
                    self.mismatch(kind, f"{self.role}: {message}")
            # Not written: the main session reads a missing report as a child that did not finish.
            failed = _write_child_file(report_path, {
                "divergences": [d._asdict() for d in self.divergences + self.mismatches],
                "checks": self.checked, "role": self.role, "hook_failures": self.hook_failures})
            if failed is not None:
                print(f"detrun: warning: {self.role}: cannot write its replay report: {failed}", file=sys.stderr)

    def _take_child_failures(self, data: dict[str, Any]) -> None:
        """Add a child's hook failures, from its failures file or its report, named by its role."""
        self.hook_failures.extend(f"{data['role']}: {failure}" for failure in data["hook_failures"])

    def _take_child_report(self, data: dict[str, Any]) -> None:
        """Add a replay child's divergences, checks and hook failures."""
        for item in data["divergences"]:
            found = Divergence(**item)
            (self.mismatches if found.check == "event" else self.divergences).append(found)
        for name, count in data["checks"].items():
            self.count_check(name, int(count))
        self._take_child_failures(data)

    def _take_child_file(self, path: str, what: str, take: Callable[[dict[str, Any]], None]) -> None:
        """Read a child's JSON file into `take` and remove it; an unreadable one is a hook failure.

        A missing file is none: a recording child writes its failures file only if it had any, and a
        child that did not finish wrote no report (as a recording drops its unfinished segment).
        """
        try:
            with open(path, encoding="utf-8") as child_file:
                take(json.load(child_file))
            os.unlink(path)
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            # Unreadable: the trace would vouch for a segment, or the verdict for checks, nobody saw.
            self.hook_failures.append(f"reading a child's {what}: {type(exc).__name__}: {exc}")

    def _merge_children(self) -> None:
        """Fold finished child segments into the trace, or child divergences into the verdict."""
        if self.recording and self.writer is not None:
            finished = [p for p in self.segment_paths if os.path.exists(p)]
            for unfinished in self.segment_paths:
                if os.path.exists(unfinished + ".partial"):
                    os.unlink(unfinished + ".partial")
            for path in finished:
                self._take_child_file(path + FAILURES_SUFFIX, "hook failures", self._take_child_failures)
            if finished:
                self.writer.append_segments(finished)
            return
        for path in self.report_paths:
            self._take_child_file(path, "replay report", self._take_child_report)


def _write_child_file(path: str, data: dict[str, Any]) -> Exception | None:
    """Write a child's JSON file whole or not at all; return what stopped it (never raised into the child's exit)."""
    # Whole: the main session reads a half-written file as a failure.
    writing = f"{path}.{os.getpid()}.tmp"
    try:
        with open(writing, "w", encoding="utf-8") as child_file:
            json.dump(data, child_file)
        os.replace(writing, path)
    except Exception as exc:  # noqa: BLE001
        try:
            os.unlink(writing)
        except OSError:
            pass
        return exc
    return None
