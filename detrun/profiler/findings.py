"""Findings: what the profile says about each op it saw, whatever framework ran it.

Both captures (torch's dispatch mode in `capture`, TensorFlow's op callbacks in `tf_capture`) hand
over one record per distinct op, each an `ObservedOp`; a `Finding` adds the patch and the severity,
and `detrun.profiler.report` turns the findings into the table and the JSON of SCHEMA.md.
Importing this module imports no framework.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Mapping, Protocol, Sequence

from detrun.profiler.kb import Rule

# Severity tiers, highest first; the table is sorted by them.
RAISES = 4  # raises under deterministic mode and detrun has no patch: the run cannot be made exact
NONDETERMINISTIC = 3  # the knowledge base says it can change bits on the reported device
MEASURED = 2  # the empirical check saw different bits here, whatever the knowledge base says
KNOWN_DETERMINISTIC = 1  # the knowledge base says it is deterministic
UNKNOWN = 0  # nothing known and nothing measured
SEVERITY_NAMES = {RAISES: "raises", NONDETERMINISTIC: "nondeterministic", MEASURED: "measured",
                  KNOWN_DETERMINISTIC: "deterministic", UNKNOWN: "ok"}

# What the table says of an op's bits on the reported device, worst first. "changes bits" needs a
# measurement that saw different bits (the H100 table, or this run's re-run check); "may change"
# is a documented claim nobody saw happen (torch docs with the H100 seeing one result, TensorFlow
# sources); "deterministic" is the knowledge base's word; "not known": no entry, nothing measured.
CHANGES_BITS = "changes bits"
MAY_CHANGE = "may change"
DETERMINISTIC = "deterministic"
NOT_KNOWN = "not known"
VERDICTS = (CHANGES_BITS, MAY_CHANGE, DETERMINISTIC, NOT_KNOWN)

# What makes such an op exact under `detrun record`, worst first: nothing, not established, the
# framework's deterministic mode (which record turns on), a detrun patch; "-" when nothing needs to.
NO_FIX = "none"
FIX_UNKNOWN = "unknown"
DET_MODE = "det mode"
PATCH = "patch"
NO_NEED = "-"
FIXES = (NO_FIX, FIX_UNKNOWN, DET_MODE, PATCH, NO_NEED)


@dataclasses.dataclass(frozen=True)
class CallSite:
    """A line of user code: absolute file path, line number and function name."""

    file: str
    line: int
    function: str

    def short(self, cwd: str, base: str | None = None) -> str:
        """Return `file:line`, the file relative to cwd, else to base (the script's folder), else its name."""
        path = self.file
        for root in (cwd, base):
            if root and path.startswith(root.rstrip(os.sep) + os.sep):
                return f"{os.path.relpath(path, root)}:{self.line}"
        return f"{os.path.basename(path) if os.path.isabs(path) else path}:{self.line}"

    def to_json(self) -> dict[str, object]:
        """Return the JSON object for this site."""
        return {"file": self.file, "line": self.line, "function": self.function}


UNKNOWN_SITE = CallSite("<unknown>", 0, "<unknown>")


class OpNames(Protocol):
    """How an op is named: `aten::scatter_` / `scatter_` with overload `src`, or a TensorFlow op type."""

    @property
    def name(self) -> str: ...

    @property
    def overload(self) -> str: ...

    @property
    def display(self) -> str: ...


class Measurement(Protocol):
    """One empirical check of an op (detrun.profiler.empirical.Verdict)."""

    @property
    def status(self) -> str: ...

    @property
    def reason(self) -> str: ...

    @property
    def differs(self) -> bool: ...


class ObservedOp(Protocol):
    """What a capture knows about one distinct op (on one device, under one knowledge-base rule)."""

    @property
    def info(self) -> OpNames: ...

    @property
    def device(self) -> str: ...

    @property
    def rule(self) -> Rule | None: ...  # the rule for the reported device

    @property
    def cuda_rule(self) -> Rule | None: ...  # the rule for CUDA (TensorFlow: GPU), whatever the reported device

    @property
    def call_site(self) -> CallSite: ...

    @property
    def count(self) -> int: ...

    @property
    def phases(self) -> set[str]: ...

    @property
    def call_sites(self) -> Mapping[CallSite, int]: ...

    @property
    def dtypes(self) -> set[str]: ...

    @property
    def shapes(self) -> Sequence[Sequence[Sequence[int]]]: ...

    @property
    def verdicts(self) -> Sequence[Measurement]: ...

    @property
    def kernels(self) -> Sequence[str]: ...

    @property
    def measured_nondeterministic(self) -> bool | None: ...

    def extra_json(self) -> dict[str, Any]:
        """Return the framework's own fields for the op's JSON object (added to the documented ones)."""


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

    record: ObservedOp
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
        base, nondeterministic in a way deterministic mode does not fix (it raises, or it stays
        nondeterministic). Ops deterministic mode fixes (conv backward via cuDNN's deterministic
        algorithms, say) are what `detrun record` already turns on; an op whose fate under
        deterministic mode is not established (None) is not counted.
        """
        if self.patch is not None:
            return False
        if self.record.measured_nondeterministic:
            return True
        rule = self.rule
        return bool(rule is not None and rule.nondeterministic
                    and (rule.raises_in_det_mode or rule.det_mode_fixes is False))

    @property
    def sources(self) -> list[str]:
        """Return the evidence behind the finding: the rule's sources, and empirical."""
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

    @property
    def verdict(self) -> str:
        """Return the table's word for the op's bits on the reported device (one of VERDICTS)."""
        rule = self.rule
        if self.record.measured_nondeterministic:
            return CHANGES_BITS
        if rule is not None and rule.nondeterministic:
            seen = rule.measured_h100.get("default") if rule.measured_h100 and rule.device == "cuda" else None
            return CHANGES_BITS if isinstance(seen, int) and seen > 1 else MAY_CHANGE
        return NOT_KNOWN if rule is None else DETERMINISTIC

    @property
    def fix(self) -> str:
        """Return what makes the op exact under detrun (one of FIXES); NO_FIX exactly when --fail-on counts it."""
        if self.verdict in (DETERMINISTIC, NOT_KNOWN):
            return NO_NEED
        if self.patch is not None:
            return PATCH
        rule = self.rule
        if self.record.measured_nondeterministic or rule is None:
            return NO_FIX
        if rule.raises_in_det_mode or rule.det_mode_fixes is False:
            return NO_FIX
        return DET_MODE if rule.det_mode_fixes else FIX_UNKNOWN

    def det_mode_text(self) -> str:
        """Describe what deterministic mode does to the op, for the table."""
        rule = self.rule
        if rule is None or not rule.nondeterministic:
            return "-"
        if rule.raises_in_det_mode:
            return "raises"
        if rule.det_mode_fixes:
            return "fixed"
        return "unknown" if rule.det_mode_fixes is None else "unchanged"

    def to_json(self) -> dict[str, Any]:
        """Return the op object of SCHEMA.md."""
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
            "verdict": self.verdict,
            "fix": self.fix,
            **record.extra_json(),
        }


def build_findings(records: Iterable[ObservedOp], reported: str | None, with_patches: bool = True) -> list[Finding]:
    """Attach patches and sort by severity (worst first), then unpatched first, then by count.

    `reported` is the device every op is judged on ("cuda"), or None for the device each ran on;
    `with_patches` is False for a framework detrun has no patches for.
    """
    findings = []
    patches: dict[str, str | None] = {}
    for record in records:
        op = record.info.display
        if op not in patches:
            patches[op] = lookup_patch(op) if with_patches else None
        findings.append(Finding(record, reported or record.device, patches[op]))
    findings.sort(key=lambda f: (-f.severity, f.patch is not None, -f.record.count, f.op))
    return findings
