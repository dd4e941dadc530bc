"""The profile report's text renderer: fits the width, never breaks an op name, summary counts == rows."""
from __future__ import annotations

import dataclasses
import io
import json
import re
from collections import Counter
from typing import Any

import pytest

from detrun.profiler import report
from detrun.profiler.findings import (
    CHANGES_BITS,
    DET_MODE,
    DETERMINISTIC,
    MAY_CHANGE,
    NO_FIX,
    NO_NEED,
    NOT_KNOWN,
    PATCH,
    CallSite,
    Finding,
)
from detrun.profiler.kb import KnowledgeBase, Rule
from detrun.profiler.text_layout import truncate_start, wrap
from support.profile_schema import documented_schema, validate
from support.profile_text import assert_summary_matches_rows, messages, table_rows

CWD = "/home/user/project"
SCRIPT = f"{CWD}/train.py"
DEEP = f"{CWD}/src/models/segmentation/heads/with/a/rather/deeply/nested/layout/segmentation_head.py"
OUTSIDE = "/opt/venv/lib/site-packages/vendor/ops.py"


@dataclasses.dataclass(frozen=True)
class Name:
    """An op name as the captures give it."""

    name: str
    overload: str = "default"

    @property
    def display(self) -> str:
        return self.name if self.overload == "default" else f"{self.name}.{self.overload}"


@dataclasses.dataclass(frozen=True)
class Check:
    """One empirical check."""

    status: str
    reason: str = ""

    @property
    def differs(self) -> bool:
        return self.status == "differs"


@dataclasses.dataclass
class Record:
    """An ObservedOp built by hand."""

    info: Name
    rule: Rule | None
    sites: dict[CallSite, int]
    count: int = 5
    device: str = "cpu"
    phases: set[str] = dataclasses.field(default_factory=lambda: {"forward"})
    dtypes: set[str] = dataclasses.field(default_factory=lambda: {"float32"})
    shapes: list[Any] = dataclasses.field(default_factory=list)
    verdicts: list[Check] = dataclasses.field(default_factory=list)
    kernels: list[str] = dataclasses.field(default_factory=list)

    @property
    def cuda_rule(self) -> Rule | None:
        return self.rule

    @property
    def call_site(self) -> CallSite:
        return next(iter(self.sites))

    @property
    def call_sites(self) -> dict[CallSite, int]:
        return self.sites

    @property
    def measured_nondeterministic(self) -> bool | None:
        return any(v.differs for v in self.verdicts) if self.verdicts else None

    def extra_json(self) -> dict[str, Any]:
        return {}


def _rule(kb: KnowledgeBase, op: str) -> Rule:
    return kb.candidates("cuda", op, "default")[0]


def _site(line: int, file: str = SCRIPT, function: str = "forward") -> dict[CallSite, int]:
    return {CallSite(file, line, function): 5}


@pytest.fixture(scope="module")
def findings() -> list[Finding]:
    """One op of each kind: measured and documented nondeterminism, patched or not, deterministic, unknown."""
    kb = KnowledgeBase.load("2.13.0")
    records = [
        (Record(Name("aten::_adaptive_avg_pool2d_backward"), _rule(kb, "aten::_adaptive_avg_pool2d_backward"),
                _site(34), phases={"backward"}), "adaptive_avg_pool2d_backward"),
        (Record(Name("aten::index_add_"), _rule(kb, "aten::index_add_"),
                {CallSite(SCRIPT, 37, "forward"): 3, CallSite(DEEP, 12, "head"): 2}), None),
        (Record(Name("aten::bincount"), _rule(kb, "aten::bincount"), _site(46, DEEP, "class_weights")), None),
        (Record(Name("aten::embedding_dense_backward"), _rule(kb, "aten::embedding_dense_backward"), _site(35)),
         None),
        (Record(Name("detrun_test::noisy_scale_with_quite_a_long_custom_name"), None, _site(9, OUTSIDE),
                verdicts=[Check("differs")]), None),
        (Record(Name("aten::add", "Tensor"), None, _site(50), verdicts=[Check("same")]), None),
    ]
    return [Finding(record, "cuda", patch) for record, patch in records]


def _report(findings: list[Finding]) -> report.Report:
    return report.Report(findings=findings, target={"name": "train.py", "args": [], "module": False, "path": SCRIPT},
                         reported_device="cuda", ran_on=["cpu"],
                         steps={"limit": 5, "completed": 5, "stopped_by_limit": True}, exit_status=0,
                         empirical={"enabled": True, "signatures_checked": 6, "seconds": 0.1},
                         kb={"file": "torch.json", "torch_version": "2.13.0", "framework_version": "2.13.0",
                             "rules_in_range": 1},
                         hook_errors=[], torch_version="2.13.0", gpu=None, seconds=1.25)


def test_verdict_and_fix_words_follow_the_evidence(findings: list[Finding]) -> None:
    words = {f.op: (f.verdict, f.fix) for f in findings}
    # docs say nondeterministic but the H100 saw one result in 6 runs: "may change", not "changes bits"
    assert words["aten::_adaptive_avg_pool2d_backward"] == (MAY_CHANGE, PATCH)
    assert words["aten::index_add_"] == (CHANGES_BITS, DET_MODE)  # 6/6 distinct; det mode fixes it
    assert words["aten::bincount"] == (CHANGES_BITS, NO_FIX)  # raises in det mode, no patch given here
    assert words["aten::embedding_dense_backward"] == (DETERMINISTIC, NO_NEED)
    assert words["detrun_test::noisy_scale_with_quite_a_long_custom_name"] == (CHANGES_BITS, NO_FIX)
    assert words["aten::add.Tensor"] == (NOT_KNOWN, NO_NEED)
    # "none" is exactly what --fail-on nondeterministic counts
    assert [f.op for f in findings if f.fix == NO_FIX] == [f.op for f in findings if f.unpatched_nondeterministic]


@pytest.mark.parametrize("show_all", [False, True])
@pytest.mark.parametrize("width", [80, 120])
def test_renderer_fits_the_width_keeps_op_names_whole_and_counts_its_rows(
        findings: list[Finding], width: int, show_all: bool, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    stream = io.StringIO()
    result = _report(findings)
    report.publish(result, stream, quiet=False, show_all=show_all, cwd=CWD, json_path=str(tmp_path / "p.json"),
                   json_shown="p.json")
    text = stream.getvalue()
    too_wide = [line for line in text.splitlines() if len(line) > width]
    assert not too_wide, "\n".join(too_wide)
    rows = assert_summary_matches_rows(text)
    listed = [f for f in findings if show_all or f.verdict != NOT_KNOWN]
    assert len(rows) == len(listed) == (6 if show_all else 5)
    # The rows name each op whole, worst first.
    assert sorted(row["op"] for row in rows) == sorted(f.op for f in listed)
    assert [row["verdict"] for row in rows][:3] == [CHANGES_BITS] * 3
    assert [row["fix"] for row in rows][:2] == [NO_FIX] * 2
    # Every note is numbered like its row and names the op whole; no word is broken across lines.
    for row in rows:
        assert re.search(rf"^\s*{row['n']}\. {re.escape(row['op'])} at\b", text, re.M), row
    assert "nond\n" not in text and "eter\n" not in text
    # A long call site keeps its end, file:line, cut at the start; paths are relative to the cwd,
    # and a file outside it and the script's folder is named alone.
    table = [line for line in text.splitlines() if not re.match(r"\s*\d+\. ", line)][:20]
    assert [line for line in table if re.search(r"(^|\s)…\S*/segmentation_head\.py:46\b", line)], text
    assert CWD not in text and "/opt/venv" not in text and "ops.py:9" in text
    said = messages(text)
    assert said[0] == "stopped after 5 optimizer steps (1.2 s)"
    assert said[-1] == "wrote p.json"
    if width == 120:  # wide: one line per row, with the call site
        assert re.search(r"^#\s+op\s+call site\s+on CUDA\*\s+det mode\s+fix$", text, re.M), text
    else:  # narrow: the call site has a line of its own under the op
        assert re.search(r"^   train\.py:34 in forward, 5 calls$", text, re.M), text


def test_summary_words_and_notes_in_the_json(findings: list[Finding], tmp_path) -> None:
    result = _report(findings)
    assert result.summary_line() == ("5 torch ops judged on CUDA (predicted): 3 change bits, 1 may change, "
                                     "1 deterministic; fix: 1 patch, 1 det mode, 2 none")
    path = tmp_path / "p.json"
    report.write_json(result, str(path), CWD)
    document = json.loads(path.read_text())
    validate(document, documented_schema())
    ops = {op["op"]: op for op in document["ops"]}
    pool = ops["aten::_adaptive_avg_pool2d_backward"]
    assert (pool["verdict"], pool["fix"], pool["severity"]) == (MAY_CHANGE, PATCH, "nondeterministic")
    assert "H100: 1 distinct result in 6 runs" in pool["note"] and "deterministic mode raises" in pool["note"]
    assert "train.py:34 in forward (backward of that line)" in pool["note"]
    assert document["summary"]["verdicts"] == {CHANGES_BITS: 3, MAY_CHANGE: 1, DETERMINISTIC: 1, NOT_KNOWN: 1}
    assert document["summary"]["fixes"][NO_FIX] == document["summary"]["unpatched"] == 2


def test_quiet_prints_one_unwrapped_summary_line(findings: list[Finding], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    stream = io.StringIO()
    report.publish(_report(findings), stream, quiet=True, show_all=False, cwd=CWD)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detrun: 5 torch ops judged on CUDA") and len(lines[0]) > 80
    assert table_rows(stream.getvalue()) == []


def test_narrow_widths_fall_back_without_breaking_words(findings: list[Finding]) -> None:
    for width in (40, 50, 60, 70):
        lines = report.table_lines(_report(findings), findings, width, CWD)
        # Only an op name longer than the width may exceed it, on a line of its own (it is never cut).
        too_wide = [line for line in lines if len(line) > width]
        assert all(re.fullmatch(r"\d+\. (\S+)", line) for line in too_wide), (width, too_wide)
        assert len(too_wide) == (1 if width < 60 else 0), (width, too_wide)
        ops = Counter(word for line in lines for word in line.split())
        assert all(ops[f.op] >= 1 for f in findings), (width, lines)


def test_wrap_and_truncate_never_exceed_the_width() -> None:
    assert truncate_start("examples/profile_ops.py:41", 12) == "…e_ops.py:41"
    assert len(truncate_start("x" * 50, 10)) == 10 and truncate_start("short", 10) == "short"
    text = "one two " + "averyveryveryverylongword" * 3 + " three"
    lines = wrap(text, 20, "detrun: ", " " * 8)
    assert all(len(line) <= 20 for line in lines) and lines[0] == "detrun: one two"
    assert lines[-1] == " " * 8 + "three"
