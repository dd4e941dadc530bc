"""The report both frameworks feed: the summary, the rich table on stderr and the JSON file (SCHEMA.md)."""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import tempfile
from typing import Any, Sequence, TextIO

from detrun import __version__
from detrun.errors import DetrunError
from detrun.profiler.findings import (
    KNOWN_DETERMINISTIC,
    MEASURED,
    NONDETERMINISTIC,
    RAISES,
    SEVERITY_NAMES,
    UNKNOWN,
    Finding,
    build_findings,
    lookup_patch,
)

JSON_SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Framework:
    """How the report speaks of one framework."""

    name: str  # "torch" or "tensorflow": the JSON's `framework`
    label: str  # in sentences
    det_mode: str  # what the framework's deterministic mode is called
    gpu: str  # what its GPU is called
    patches: bool  # detrun has patches for its ops
    empirical: bool  # the profile re-runs its ops to compare bits


TORCH = Framework("torch", "torch", "deterministic mode", "CUDA", patches=True, empirical=True)
TENSORFLOW = Framework("tensorflow", "TensorFlow", "op determinism", "GPU", patches=False, empirical=False)


@dataclasses.dataclass
class Report:
    """Everything the profile found, plus the context needed to read it."""

    findings: list[Finding]
    target: dict[str, Any]
    reported_device: str  # "cuda" or "auto"
    ran_on: list[str]
    steps: dict[str, Any]
    exit_status: int
    empirical: dict[str, Any]
    kb: dict[str, Any]
    hook_errors: list[str]
    torch_version: str | None
    gpu: str | None
    fail_on_triggered: bool = False  # set when --fail-on nondeterministic found something
    framework: Framework = TORCH
    framework_version: str | None = None  # defaults to torch_version

    @property
    def flagged(self) -> list[Finding]:
        """Return the findings that can change bits (severity measured or worse)."""
        return [f for f in self.findings if f.severity >= MEASURED]

    @property
    def fail_on_nondeterministic(self) -> bool:
        """Say whether --fail-on nondeterministic would fail."""
        return any(f.unpatched_nondeterministic for f in self.findings)

    def summary(self) -> dict[str, int]:
        """Return the counts for the summary line and the JSON."""
        counts = {name: 0 for name in SEVERITY_NAMES.values()}
        for finding in self.findings:
            counts[SEVERITY_NAMES[finding.severity]] += 1
        return {
            "distinct_ops": len(self.findings),
            "calls": sum(f.record.count for f in self.findings),
            **counts,
            "flagged": len(self.flagged),
            "unpatched": sum(1 for f in self.findings if f.unpatched_nondeterministic),
        }

    def summary_line(self) -> str:
        """Return the one-line verdict (without the 'detrun:' prefix)."""
        s = self.summary()
        gpu = self.framework.gpu
        if self.reported_device == "cuda":
            where = f"on {gpu}" if "cuda" in self.ran_on else f"on {gpu} (predicted)"
        else:
            where = "on the device it ran on"
        can_change = s["raises"] + s["nondeterministic"]
        if self.framework is not TORCH:
            text = f"{s['distinct_ops']} distinct {self.framework.label} ops; can change bits {where}: {can_change}"
            if s["raises"]:
                text += f" ({s['raises']} raise under {self.framework.det_mode})"
            return text + f"; still change bits or raise under {self.framework.det_mode}: {s['unpatched']}"
        text = f"{s['distinct_ops']} distinct ops; can change bits {where}: {can_change}"
        if s["raises"]:
            text += f" ({s['raises']} raise under deterministic mode without a patch)"
        measured_on = "/".join(self.ran_on)
        text += f"; measured nondeterministic on {measured_on}, not in the knowledge base: {s['measured']}"
        text += f"; without a detrun patch: {s['unpatched']}"
        return text

    def to_json(self) -> dict[str, Any]:
        """Return the document of SCHEMA.md."""
        return {
            "schema_version": JSON_SCHEMA_VERSION,
            "tool": "detrun profile",
            "detrun_version": __version__,
            "python_version": platform.python_version(),
            "torch_version": self.torch_version,
            "framework": self.framework.name,
            "framework_version": self.framework_version or self.torch_version,
            "gpu": self.gpu,
            "target": self.target,
            "reported_device": self.reported_device,
            "ran_on": self.ran_on,
            "steps": self.steps,
            "exit_status": self.exit_status,
            "empirical": self.empirical,
            "kb": self.kb,
            "hook_errors": self.hook_errors,
            "summary": self.summary(),
            "ops": [f.to_json() for f in self.findings],
        }


def write_json(report: Report, path: str) -> None:
    """Write the report as JSON, atomically (a temporary file renamed over the target)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise DetrunError(f"cannot write {path}: no such directory {directory}")
    fd, tmp = tempfile.mkstemp(prefix=".detrun-profile-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(report.to_json(), f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise DetrunError(f"cannot write {path}: {exc.strerror}") from None


_STYLES = {RAISES: "bold red", NONDETERMINISTIC: "yellow", MEASURED: "magenta", KNOWN_DETERMINISTIC: "green",
           UNKNOWN: "dim"}


def render_table(report: Report, stream: TextIO, show_all: bool, cwd: str | None = None) -> None:
    """Print the findings as a rich table on stream (stderr): flagged and known ops, or all with show_all."""
    from rich.console import Console
    from rich.table import Table

    framework = report.framework
    rows = [f for f in report.findings if show_all or f.severity >= KNOWN_DETERMINISTIC]
    width = None if stream.isatty() else max(shutil.get_terminal_size((160, 24)).columns, 160)
    console = Console(file=stream, width=width, highlight=False, soft_wrap=False)
    predicted = report.reported_device == "cuda" and "cuda" not in report.ran_on
    table = Table(title=None, show_lines=False, header_style="bold")
    table.add_column("op", no_wrap=True)
    table.add_column("count", justify="right")
    table.add_column("user call site", overflow="fold")
    gpu = framework.gpu
    cuda_header = f"on {gpu} (predicted)" if predicted else (f"on {gpu}" if report.reported_device == "cuda"
                                                              else "on its device")
    table.add_column(cuda_header, overflow="fold")
    table.add_column("det mode" if framework is TORCH else framework.det_mode)
    if framework.empirical:
        table.add_column("measured here", overflow="fold")
    if framework.patches:
        table.add_column("patch", overflow="fold")
    cwd = cwd or os.getcwd()
    for finding in rows:
        record = finding.record
        site = record.call_site.display(cwd)
        more = len(record.call_sites) - 1
        if more > 0:
            site += f" (+{more} more)"
        style = _STYLES[finding.severity]
        cells = [finding.op, str(record.count), site, f"[{style}]{finding.status_text()}[/]", finding.det_mode_text()]
        if framework.empirical:
            cells.append(finding.measured_text())
        if framework.patches:
            cells.append(finding.patch or "none")
        table.add_row(*cells)
    hidden = len(report.findings) - len(rows)
    if rows:
        console.print(table)
        console.print("detrun: a backward op's call site is the forward line that created it", markup=False)
    if hidden:
        unknown = ("have no known issue and measured the same" if framework.empirical
                   else "are not in the knowledge base")
        console.print(f"detrun: {hidden} other ops {unknown} (--all lists them)", markup=False)


def publish(report: Report, stream: TextIO, *, quiet: bool, show_all: bool, cwd: str, notes: Sequence[str] = (),
            json_path: str | None = None, json_shown: str | None = None) -> None:
    """Print the table, the notes and the summary line; write the JSON; say why --fail-on fails."""
    if not quiet:
        render_table(report, stream, show_all, cwd)
        for note in notes:
            say(stream, note)
    say(stream, report.summary_line())
    if json_path:
        write_json(report, json_path)
        if not quiet:
            say(stream, f"wrote {json_shown or json_path}")
    if report.fail_on_triggered:
        count = report.summary()["unpatched"]
        why = ("can change bits and have no detrun patch" if report.framework.patches
               else f"still change bits or raise under {report.framework.det_mode}")
        say(stream, f"--fail-on nondeterministic: {count} ops {why}; exiting with status 4")


def say(stream: TextIO, message: str) -> None:
    """Print one detrun line on stream."""
    stream.write(f"detrun: {message}\n")
    stream.flush()


__all__ = ["Finding", "Framework", "Report", "TENSORFLOW", "TORCH", "build_findings", "publish", "render_table",
           "write_json", "lookup_patch", "say", "JSON_SCHEMA_VERSION"]
