"""The report both frameworks feed: how the script ended, the table, its notes, the summary line and the JSON.

One renderer for torch and TensorFlow. The table fits the output width (COLUMNS, the terminal,
80 when piped) and never breaks a word: each row gives an op, its call site, one word for its bits
(`findings.VERDICTS`), what deterministic mode does and the fix (`findings.FIXES`); the numbered
notes below give the evidence in words (`notes`); the summary line counts the rows in the same
words. The JSON (SCHEMA.md) keeps every detail.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
from collections import Counter
from typing import Any, Callable, Sequence, TextIO

from detrun import __version__
from detrun.errors import DetrunError
from detrun.profiler.findings import (
    CHANGES_BITS,
    DET_MODE,
    DETERMINISTIC,
    FIX_UNKNOWN,
    FIXES,
    KNOWN_DETERMINISTIC,
    MAY_CHANGE,
    MEASURED,
    NO_FIX,
    NO_NEED,
    NONDETERMINISTIC,
    NOT_KNOWN,
    PATCH,
    RAISES,
    SEVERITY_NAMES,
    UNKNOWN,
    VERDICTS,
    Finding,
    build_findings,
    lookup_patch,
)
from detrun.profiler.notes import op_note
from detrun.profiler.text_layout import (
    GAP,
    Column,
    fits,
    fixed_width,
    output_width,
    render,
    truncate_start,
    wrap,
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
    step_word: str = "optimizer step"  # what --steps counts


TORCH = Framework("torch", "torch", "deterministic mode", "CUDA", patches=True, empirical=True)
TENSORFLOW = Framework("tensorflow", "TensorFlow", "op determinism", "GPU", patches=False, empirical=False,
                       step_word="training step")


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
    seconds: float | None = None  # how long the script ran, for the "stopped after" line

    @property
    def flagged(self) -> list[Finding]:
        """Return the findings that can change bits (severity measured or worse)."""
        return [f for f in self.findings if f.severity >= MEASURED]

    @property
    def fail_on_nondeterministic(self) -> bool:
        """Say whether --fail-on nondeterministic would fail."""
        return any(f.unpatched_nondeterministic for f in self.findings)

    @property
    def predicted(self) -> bool:
        """Say whether the ops are judged on a GPU the run did not use (a prediction)."""
        return self.reported_device == "cuda" and "cuda" not in self.ran_on

    @property
    def device_header(self) -> str:
        """Return the header of the bits column: the device the ops are judged on (* = predicted)."""
        if self.reported_device != "cuda":
            return "on its device"
        return f"on {self.framework.gpu}" + ("*" if self.predicted else "")

    def rows(self, show_all: bool = False) -> list[Finding]:
        """Return the table's rows in its order: worst bits first, then the worst fix, then most calls."""
        rows = [f for f in self.findings if show_all or f.verdict != NOT_KNOWN]
        return sorted(rows, key=lambda f: (VERDICTS.index(f.verdict), FIXES.index(f.fix), -f.record.count, f.op))

    def summary(self) -> dict[str, Any]:
        """Return the counts for the JSON (over every op, listed or not)."""
        counts = {name: 0 for name in SEVERITY_NAMES.values()}
        for finding in self.findings:
            counts[SEVERITY_NAMES[finding.severity]] += 1
        return {
            "distinct_ops": len(self.findings),
            "calls": sum(f.record.count for f in self.findings),
            **counts,
            "flagged": len(self.flagged),
            "unpatched": sum(1 for f in self.findings if f.unpatched_nondeterministic),
            "verdicts": {word: sum(1 for f in self.findings if f.verdict == word) for word in VERDICTS},
            "fixes": {word: sum(1 for f in self.findings if f.fix == word) for word in FIXES},
        }

    def summary_line(self, show_all: bool = False) -> str:
        """Return the one-line summary (without 'detrun:'): the table's rows counted in the table's words."""
        rows = self.rows(show_all)
        if self.reported_device == "cuda":
            where = f"on {self.framework.gpu}" + (" (predicted)" if self.predicted else "")
        else:
            where = "on the device each ran on"
        verdicts = Counter(f.verdict for f in rows)
        fixes = Counter(f.fix for f in rows)
        text = f"{_count(len(rows), self.framework.label + ' op')} judged {where}"
        if rows:
            text += ": " + ", ".join(_plural(verdicts[w], w) for w in VERDICTS if verdicts[w])
        if any(fixes[w] for w in FIXES if w != NO_NEED):
            text += "; fix: " + ", ".join(f"{fixes[w]} {w}" for w in reversed(FIXES)
                                          if w != NO_NEED and (fixes[w] or w == NO_FIX))
        return text

    def ending_line(self) -> str:
        """Say how the script ended: stopped at the step limit, or ended by itself with a status."""
        steps = int(self.steps.get("completed", 0))
        took = f" ({self.seconds:.1f} s)" if self.seconds is not None else ""
        counted = _count(steps, self.framework.step_word)
        if self.steps.get("stopped_by_limit"):
            return f"stopped after {counted}{took}"
        return f"script ended with status {self.exit_status} after {counted}{took}"

    def to_json(self, cwd: str | None = None) -> dict[str, Any]:
        """Return the document of SCHEMA.md; each op's `note` is the table's note (paths relative to cwd)."""
        cwd = cwd or os.getcwd()
        base = os.path.dirname(str(self.target.get("path") or "")) or None
        framework = self.framework
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
            "ops": [dict(f.to_json(), note=op_note(f, det_mode=framework.det_mode, gpu=framework.gpu, cwd=cwd,
                                                   base=base))
                    for f in self.findings],
        }


def write_json(report: Report, path: str, cwd: str | None = None) -> None:
    """Write the report as JSON, atomically (a temporary file renamed over the target)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise DetrunError(f"cannot write {path}: no such directory {directory}")
    fd, tmp = tempfile.mkstemp(prefix=".detrun-profile-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(report.to_json(cwd), f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise DetrunError(f"cannot write {path}: {exc.strerror}") from None


# ANSI styles for a terminal (NO_COLOR turns them off): the table's words, worst in red.
_STYLES = {CHANGES_BITS: "1;31", MAY_CHANGE: "33", DETERMINISTIC: "32", NOT_KNOWN: "2", NO_FIX: "1;31"}
_SITE_MIN = 20  # below this a call site column says too little: it moves to a line of its own
_OP_MIN = 24  # an op column narrower than this leaves too many ops on lines of their own
_FIX_LEGEND = {PATCH: "patch = a detrun patch makes it exact",
               DET_MODE: "det mode = {det_mode} does (detrun record turns it on)",
               NO_FIX: "none = nothing does", FIX_UNKNOWN: "unknown = not established"}


def _count(count: int, noun: str) -> str:
    """Return `count noun`, the noun plural unless count is 1: '1 call', '2 calls'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _plural(count: int, word: str) -> str:
    """Return `count word` with the verb agreeing: '1 changes bits', '2 change bits'."""
    if count != 1 and word == CHANGES_BITS:
        word = "change bits"
    return f"{count} {word}"


def _row_number_column(rows: Sequence[Finding]) -> Column:
    """Return the `#` column: the row's note number."""
    return Column("#", [str(i + 1) for i in range(len(rows))], right=True)


def _site_cell(finding: Finding, cwd: str, base: str | None) -> str:
    """Return the call site cell: `file:line`, and `(+N)` for the op's other lines."""
    record = finding.record
    more = len(record.call_sites) - 1
    return record.call_site.short(cwd, base) + (f" (+{more})" if more > 0 else "")


def _site_line(finding: Finding, indent: int, width: int, cwd: str, base: str | None) -> str:
    """Return a row's second line in the narrow layout: `file:line in function (+N more), K calls`."""
    record = finding.record
    site = record.call_site
    more = len(record.call_sites) - 1
    calls = f", {_count(record.count, 'call')}"
    room = width - indent
    for suffix in (f" in {site.function}" + (f" (+{more} more)" if more > 0 else "") + calls,
                   (f" (+{more})" if more > 0 else "") + calls, ""):
        if room - len(suffix) >= _SITE_MIN or not suffix:
            return " " * indent + truncate_start(site.short(cwd, base), max(room - len(suffix), 1)) + suffix
    return ""  # not reached: the last suffix is empty


def table_lines(report: Report, rows: Sequence[Finding], width: int, cwd: str,
                paint: Callable[[Column, int, str], str] | None = None) -> list[str]:
    """Lay the rows out in width columns: one line per row if it fits, else the call site on a second line."""
    base = os.path.dirname(str(report.target.get("path") or "")) or None
    number = _row_number_column(rows)
    op = Column("op", [f.op for f in rows])
    calls = Column("calls", [str(f.record.count) for f in rows], right=True)
    site = Column("call site", [_site_cell(f, cwd, base) for f in rows], flexible=True)
    verdict = Column(report.device_header, [f.verdict for f in rows], styled=True)
    det_mode = Column("det mode", [f.det_mode_text() for f in rows])
    fix = Column("fix", [f.fix for f in rows], styled=True)
    # Widest first; calls then det mode give way before the call site does (the notes keep both).
    for columns in ([number, op, calls, site, verdict, det_mode, fix], [number, op, site, verdict, det_mode, fix],
                    [number, op, calls, site, verdict, fix], [number, op, site, verdict, fix]):
        if fits(columns, width, _SITE_MIN):
            return render(columns, width, paint)
    # Narrower: the call site gets a line of its own under the op; an op name too long for its
    # column gets one too, above the row's words (it is never cut).
    for words in ([verdict, det_mode, fix], [verdict, fix]):
        room = width - fixed_width([number, *words]) - len(GAP)
        if room < _OP_MIN:
            continue
        long_rows = {i for i, f in enumerate(rows) if len(f.op) > room}
        capped = Column("op", ["" if i in long_rows else f.op for i, f in enumerate(rows)])
        shown = Column("#", ["" if i in long_rows else n for i, n in enumerate(number.cells)], right=True)
        lines = render([shown, capped, *words], width, paint)
        indent = number.natural + len(GAP)
        out = lines[:1]
        for index, finding in enumerate(rows):
            if index in long_rows:
                out.append(number.cells[index].rjust(number.natural) + GAP + finding.op)
            out += [lines[index + 1], _site_line(finding, indent, width, cwd, base)]
        return out
    # Too narrow for any table (or an op name as wide as the screen): one block per row.
    out = []
    for index, finding in enumerate(rows):
        out.append(f"{index + 1}. {finding.op}")
        detail = (f"{report.device_header}: {finding.verdict}; det mode: {finding.det_mode_text()}; "
                  f"fix: {finding.fix}; at {_site_cell(finding, cwd, base)}, {_count(finding.record.count, 'call')}")
        out += wrap(detail, width, "   ")
    return out


def _ansi(column: Column, row: int, text: str) -> str:
    """Style a cell for a terminal: bold headers, coloured verdict and fix words."""
    if row < 0:
        return f"\033[1m{text}\033[0m"
    code = _STYLES.get(text.strip()) if column.styled else None
    return f"\033[{code}m{text}\033[0m" if code else text


def render_table(report: Report, stream: TextIO, show_all: bool, cwd: str | None = None,
                 width: int | None = None) -> None:
    """Print the table, its legend and the numbered notes on stream (stderr), in the stream's width."""
    framework = report.framework
    width = width or output_width(stream)
    cwd = cwd or os.getcwd()
    base = os.path.dirname(str(report.target.get("path") or "")) or None
    rows = report.rows(show_all)
    color = stream.isatty() and "NO_COLOR" not in os.environ
    out: list[str] = []
    if rows:
        out += table_lines(report, rows, width, cwd, _ansi if color else None)
        legend = []
        if report.predicted:
            legend.append(f"* predicted from detrun's knowledge base: this run used the "
                          f"{' and '.join(d.upper() for d in report.ran_on)}.")
        fixes = [fix for fix in FIXES if fix in _FIX_LEGEND and any(f.fix == fix for f in rows)]
        if fixes:
            legend.append("fix: " + "; ".join(_FIX_LEGEND[fix] for fix in fixes).format(
                det_mode=framework.det_mode) + ".")
        if framework is not TORCH:
            legend.append(f"det mode: TensorFlow's {framework.det_mode} (enable_op_determinism).")
        for line in legend:
            out += wrap(line, width, "", "  ")
        out.append("")
        for index, finding in enumerate(rows):
            note = op_note(finding, det_mode=framework.det_mode, gpu=framework.gpu, cwd=cwd, base=base)
            out += wrap(note, width, f"{index + 1}. ".rjust(len(str(len(rows))) + 2))
        out.append("")
    stream.write("".join(line + "\n" for line in out))
    hidden = len(report.findings) - len(rows)
    if hidden:
        unknown = ("are not in the knowledge base and measured the same" if framework.empirical
                   else "are not in the knowledge base")
        say(stream, f"{hidden} other ops {unknown} (--all lists them)", width)


def announce(stream: TextIO, framework: Framework, target: str, steps: int, device: str,
             empirical: bool | None = None) -> None:
    """Print the first line: what is profiled, for how long, judged on which device."""
    limit = f"stops after {_count(steps, framework.step_word)}" if steps else "runs to the end"
    judged = (f"predicting {framework.gpu} behaviour" if device == "cuda"
              else "judging each op on the device it runs on")
    text = f"profiling {target}: {limit}; {judged}"
    if empirical is not None:
        text += "; empirical check on" if empirical else "; empirical check off"
    say(stream, text)


def publish(report: Report, stream: TextIO, *, quiet: bool, show_all: bool, cwd: str, notes: Sequence[str] = (),
            json_path: str | None = None, json_shown: str | None = None) -> None:
    """Print how the script ended, the table, the notes and the summary line; write the JSON; say why --fail-on fails."""
    # -q keeps its promise of one line per message, for CI logs and grep: nothing is wrapped.
    width = 0 if quiet else output_width(stream)
    if not quiet:
        say(stream, report.ending_line(), width)
        render_table(report, stream, show_all, cwd, width)
        for note in notes:
            say(stream, note, width)
    say(stream, report.summary_line(show_all), width)
    if json_path:
        write_json(report, json_path, cwd)
        if not quiet:
            say(stream, f"wrote {json_shown or json_path}", width)
    if report.fail_on_triggered:
        count = report.summary()["unpatched"]
        why = ("can change bits and have no detrun patch" if report.framework.patches
               else f"still change bits or raise under {report.framework.det_mode}")
        say(stream, f"--fail-on nondeterministic: {count} ops {why}; exiting with status 4", width)


def say(stream: TextIO, message: str, width: int | None = None) -> None:
    """Print one detrun message on stream, wrapped to width (None: the output width; 0: never wrapped)."""
    width = output_width(stream) if width is None else width
    lines = wrap(message, width, "detrun: ", " " * 8) if width else [f"detrun: {message}"]
    stream.write("".join(line + "\n" for line in lines))
    stream.flush()


__all__ = ["Finding", "Framework", "Report", "TENSORFLOW", "TORCH", "build_findings", "publish", "render_table",
           "table_lines", "announce", "write_json", "lookup_patch", "say", "JSON_SCHEMA_VERSION", "RAISES",
           "NONDETERMINISTIC", "MEASURED", "KNOWN_DETERMINISTIC", "UNKNOWN"]
