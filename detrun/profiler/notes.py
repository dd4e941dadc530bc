"""The numbered notes under the profile table: for each row, where it ran, the evidence and the fix, in words.

The table gives one word per question (its bits, deterministic mode, the fix); a note says why:
which source makes the claim (torch docs, the H100 runs of DESIGN.md, TensorFlow's release notes,
this run's re-run check), what the framework's deterministic mode does to the op, and what
`detrun record` does about it. The JSON carries the same text as each op's `note`.
"""
from __future__ import annotations

from detrun.profiler.findings import DET_MODE, NO_FIX, NO_NEED, PATCH, Finding
from detrun.profiler.kb import Rule

_MAX_OTHER_SITES = 2

# How the notes name a knowledge-base source (a file's own source keys are shown as they are).
_SOURCE_WORDS = {"docs": "torch docs", "raised-here": "raised in this run"}


def where_text(finding: Finding, cwd: str, base: str | None) -> str:
    """Say where the op ran: `file:line in function`, other lines, and the number of calls."""
    record = finding.record
    site = record.call_site
    text = f"{site.short(cwd, base)} in {site.function}"
    if record.phases and set(record.phases) == {"backward"}:
        text += " (backward of that line)"
    others = [s.short(cwd, base) for s in record.call_sites if s != site]
    if others:
        shown = ", ".join(others[:_MAX_OTHER_SITES])
        more = len(others) - _MAX_OTHER_SITES
        text += f", also {shown}" + (f" and {more} more" if more > 0 else "")
    return text + f", {record.count} call{'' if record.count == 1 else 's'}"


def _evidence(rule: Rule, gpu: str) -> str:
    """Say what the knowledge base claims and on what evidence: `torch docs: nondeterministic on CUDA; H100: ...`."""
    device = gpu if rule.device == "cuda" else rule.device.upper()
    claim = "nondeterministic" if rule.nondeterministic else "deterministic"
    sources = [_SOURCE_WORDS.get(s, s) for s in rule.source if s != "measured-h100"]
    text = f"{', '.join(sources)}: {claim} on {device}" if sources else f"{claim} on {device}"
    measured = rule.measured_h100
    if measured and rule.device == "cuda":
        default, runs = measured.get("default"), measured.get("runs")
        text += f"; H100: {default} distinct result{'s' if default != 1 else ''} in {runs} runs"
        det = measured.get("det_mode")
        if rule.nondeterministic and isinstance(det, int):
            text += f", {det} in deterministic mode"
    return text


def _det_mode_and_fix(finding: Finding, det_mode: str) -> str | None:
    """Say what deterministic mode does to a nondeterministic op and what makes it exact under detrun."""
    rule = finding.rule
    fix = finding.fix
    if fix == NO_NEED:
        return None
    if rule is None or not rule.nondeterministic:
        does = None
    elif rule.raises_in_det_mode:
        does = f"{det_mode} raises"
    elif rule.det_mode_fixes:
        does = f"{det_mode} makes it deterministic"
    elif rule.det_mode_fixes is False:
        does = f"{det_mode} leaves it nondeterministic"
    else:
        does = f"what {det_mode} does is not established"
    if fix == PATCH:
        then = f"fix: detrun record installs its patch {finding.patch!r}"
    elif fix == DET_MODE:
        then = f"fix: detrun record turns {det_mode} on"
    elif fix == NO_FIX:
        then = "fix: none (detrun has no patch for it)"
    else:
        then = "fix: unknown"
    return f"{does}; {then}" if does else then


def op_note(finding: Finding, *, det_mode: str, gpu: str, cwd: str, base: str | None) -> str:
    """Return the note of one row: `op at file:line in function, N calls: evidence; why; det mode; fix.`"""
    record = finding.record
    rule = finding.rule
    said = [_evidence(rule, gpu) if rule is not None else "not in the knowledge base"]
    if record.measured_nondeterministic:
        said.append(f"re-run here ({record.device}) on exact copies of its inputs, it gave different bits")
    elif record.verdicts and rule is None:
        said.append(f"re-run check here: {finding.measured_text()}")
    if rule is not None and rule.note:
        said.append(rule.note.rstrip("."))
    said += [text for text in (_det_mode_and_fix(finding, det_mode),) if text]
    if record.kernels:
        said.append(f"CUDA kernels: {', '.join(record.kernels)}")
    return f"{finding.op} at {where_text(finding, cwd, base)}: {'; '.join(said)}."
