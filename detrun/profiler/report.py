"""Turn captured ops into findings: severity, patch, the rich table on stderr and the JSON file."""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import tempfile
from typing import TYPE_CHECKING, Any, Iterable, TextIO

from detrun import __version__
from detrun.errors import DetrunError
from detrun.profiler.kb import Rule

if TYPE_CHECKING:
    from detrun.profiler.capture import OpRecord

JSON_SCHEMA_VERSION = 1

# Severity tiers, highest first; the table is sorted by them.
RAISES = 4  # raises under deterministic mode and detrun has no patch: the run cannot be made exact
NONDETERMINISTIC = 3  # the knowledge base says it can change bits on the reported device
MEASURED = 2  # the empirical check saw different bits here, whatever the knowledge base says
KNOWN_DETERMINISTIC = 1  # the knowledge base says it is deterministic
UNKNOWN = 0  # nothing known and nothing measured
SEVERITY_NAMES = {RAISES: "raises", NONDETERMINISTIC: "nondeterministic", MEASURED: "measured",
                  KNOWN_DETERMINISTIC: "deterministic", UNKNOWN: "ok"}


def lookup_patch(op: str) -> str | None:
    """Ask detrun.patches for the patch of an op; None when there is none or patches are absent."""
    try:
        from detrun.patches import patch_for_op
    except (ImportError, AttributeError):
        return None
    try:
        return patch_for_op(op)
    except Exception:  # noqa: BLE001 - a bug in the registry must not hide the report
        return None


@dataclasses.dataclass
class Finding:
    """One row of the report: an op, where the user called it, what is known and measured about it."""

    record: OpRecord
    reported_device: str
    patch: str | None

    @property
    def rule(self) -> Rule | None:
        """Return the knowledge-base rule for the reported device, if any."""
        return self.record.rule

    @property
    def op(self) -> str:
        """Return the op's display name."""
        return self.record.info.display

    @property
    def nondeterministic(self) -> bool | None:
        """Return the knowledge base's claim for the reported device (None: no entry)."""
        return None if self.rule is None else self.rule.nondeterministic

    @property
    def severity(self) -> int:
        """Return the severity tier used for sorting and --fail-on."""
        rule = self.rule
        if rule is not None and rule.nondeterministic and rule.raises_in_det_mode and self.patch is None:
            return RAISES
        if rule is not None and rule.nondeterministic:
            return NONDETERMINISTIC
        if self.record.measured_nondeterministic:
            return MEASURED
        if rule is not None:
            return KNOWN_DETERMINISTIC
        return UNKNOWN

    @property
    def unpatched_nondeterministic(self) -> bool:
        """What --fail-on nondeterministic fails on: still changes bits under detrun's strict policy.

        That is: no detrun patch, and either measured nondeterministic here or, per the knowledge
        base, nondeterministic on CUDA in a way deterministic mode does not fix (it raises, or it
        stays nondeterministic). Ops deterministic mode fixes (conv backward via cuDNN's
        deterministic algorithms, say) are what `detrun record` already turns on.
        """
        if self.patch is not None:
            return False
        if self.record.measured_nondeterministic:
            return True
        rule = self.rule
        return bool(rule is not None and rule.nondeterministic and (rule.raises_in_det_mode or not rule.det_mode_fixes))

    @property
    def sources(self) -> list[str]:
        """Return the evidence behind the finding: docs, measured-h100, empirical."""
        out = list(self.rule.source) if self.rule is not None else []
        if self.record.measured_nondeterministic:
            out.append("empirical")
        return out

    def measured_text(self) -> str:
        """Summarise the empirical checks for the table."""
        verdicts = self.record.verdicts
        if not verdicts:
            return "not run"
        if any(v.differs for v in verdicts):
            return f"differs ({self.record.device})"
        if any(v.status == "same" for v in verdicts):
            return "same"
        first = verdicts[0]
        return f"{first.status}: {first.reason}" if first.reason else first.status

    def status_text(self) -> str:
        """Describe the knowledge base's claim, with its evidence, for the table."""
        rule = self.rule
        if rule is None:
            return "not in knowledge base"
        word = "nondeterministic" if rule.nondeterministic else "deterministic"
        evidence = []
        if "docs" in rule.source:
            evidence.append("docs")
        if rule.measured_h100:
            m = rule.measured_h100
            evidence.append(f"H100 {m.get('default')}/{m.get('runs')} distinct")
        return f"{word} ({', '.join(evidence)})" if evidence else word

    def det_mode_text(self) -> str:
        """Describe what deterministic mode does to the op, for the table."""
        rule = self.rule
        if rule is None or not rule.nondeterministic:
            return "-"
        if rule.raises_in_det_mode:
            return "raises"
        if rule.det_mode_fixes:
            return "fixed"
        return "unchanged"

    def to_json(self) -> dict[str, Any]:
        record = self.record
        cuda_rule = record.cuda_rule
        rule = self.rule
        return {
            "op": self.op,
            "name": record.info.name,
            "overload": record.info.overload,
            "count": record.count,
            "device": record.device,
            "phases": sorted(record.phases),
            "dtypes": sorted(record.dtypes),
            "shapes": record.shapes,
            "call_site": record.call_site.to_json(),
            "call_sites": [dict(site.to_json(), count=count) for site, count in record.call_sites.items()],
            "reported_device": self.reported_device,
            "nondeterministic": self.nondeterministic,
            "nondeterministic_cuda": None if cuda_rule is None else cuda_rule.nondeterministic,
            "raises_in_det_mode": None if rule is None else rule.raises_in_det_mode,
            "det_mode_fixes": None if rule is None else rule.det_mode_fixes,
            "measured_nondeterministic": record.measured_nondeterministic,
            "measured": [{"status": v.status, "reason": v.reason} for v in record.verdicts],
            "patch": self.patch,
            "source": self.sources,
            "kb": None if rule is None else rule.to_json(),
            "kernels": list(record.kernels),
            "severity": SEVERITY_NAMES[self.severity],
        }


def build_findings(records: Iterable[OpRecord], reported: str | None) -> list[Finding]:
    """Attach patches and sort by severity (worst first), then unpatched first, then by count."""
    findings = []
    patches: dict[str, str | None] = {}
    for record in records:
        op = record.info.display
        if op not in patches:
            patches[op] = lookup_patch(op)
        findings.append(Finding(record, reported or record.device, patches[op]))
    findings.sort(key=lambda f: (-f.severity, f.patch is not None, -f.record.count, f.op))
    return findings


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
    torch_version: str
    gpu: str | None
    fail_on_triggered: bool = False  # set when --fail-on nondeterministic found something

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
        if self.reported_device == "cuda":
            where = "on CUDA" if "cuda" in self.ran_on else "on CUDA (predicted)"
        else:
            where = "on the device it ran on"
        can_change = s["raises"] + s["nondeterministic"]
        text = f"{s['distinct_ops']} distinct ops; can change bits {where}: {can_change}"
        if s["raises"]:
            text += f" ({s['raises']} raise under deterministic mode without a patch)"
        measured_on = "/".join(self.ran_on)
        text += f"; measured nondeterministic on {measured_on}, not in the knowledge base: {s['measured']}"
        text += f"; without a detrun patch: {s['unpatched']}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": JSON_SCHEMA_VERSION,
            "tool": "detrun profile",
            "detrun_version": __version__,
            "python_version": platform.python_version(),
            "torch_version": self.torch_version,
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

    rows = [f for f in report.findings if show_all or f.severity >= KNOWN_DETERMINISTIC]
    width = None if stream.isatty() else max(shutil.get_terminal_size((160, 24)).columns, 160)
    console = Console(file=stream, width=width, highlight=False, soft_wrap=False)
    predicted = report.reported_device == "cuda" and "cuda" not in report.ran_on
    table = Table(title=None, show_lines=False, header_style="bold")
    table.add_column("op", no_wrap=True)
    table.add_column("count", justify="right")
    table.add_column("user call site", overflow="fold")
    cuda_header = "on CUDA (predicted)" if predicted else ("on CUDA" if report.reported_device == "cuda"
                                                             else "on its device")
    table.add_column(cuda_header, overflow="fold")
    table.add_column("det mode")
    table.add_column("measured here", overflow="fold")
    table.add_column("patch", overflow="fold")
    cwd = cwd or os.getcwd()
    for finding in rows:
        record = finding.record
        site = record.call_site.display(cwd)
        more = len(record.call_sites) - 1
        if more > 0:
            site += f" (+{more} more)"
        style = _STYLES[finding.severity]
        table.add_row(finding.op, str(record.count), site, f"[{style}]{finding.status_text()}[/]",
                      finding.det_mode_text(), finding.measured_text(), finding.patch or "none")
    hidden = len(report.findings) - len(rows)
    if rows:
        console.print(table)
        console.print("detrun: a backward op's call site is the forward line that created it", markup=False)
    if hidden:
        console.print(f"detrun: {hidden} other ops have no known issue and measured the same "
                      f"(--all lists them)", markup=False)


def say(stream: TextIO, message: str) -> None:
    """Print one detrun line on stream."""
    stream.write(f"detrun: {message}\n")
    stream.flush()


__all__ = ["Finding", "Report", "build_findings", "render_table", "write_json", "lookup_patch", "say",
           "JSON_SCHEMA_VERSION"]
