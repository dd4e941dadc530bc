"""A child process's hook failures reach the main session: a recorded segment's and a replay report's."""
from __future__ import annotations

import json
from pathlib import Path

from detrun.engine.child_segments import FAILURES_SUFFIX
from detrun.engine.session import Session
from detrun.trace import Trace, TraceWriter


def _recording_child(base: Path, role: str) -> Session:
    return Session("record", writer=TraceWriter(f"{base}.{role}.partial", segment=role), quiet=True, role=role)


def test_a_recorded_segments_hook_failures_reach_the_main_session(tmp_path: Path) -> None:
    main = Session("record", writer=TraceWriter(str(tmp_path / "main.zst"), {}), quiet=True)
    base = tmp_path / "seg"
    failing, clean = _recording_child(base, "dl0.i0.w0"), _recording_child(base, "dl0.i0.w1")
    failing.hook_failed("DataLoader worker batches", RuntimeError("no repr"))
    failing.finish_child()
    clean.finish_child()
    assert (tmp_path / f"seg.dl0.i0.w0{FAILURES_SUFFIX}").exists()
    assert not (tmp_path / f"seg.dl0.i0.w1{FAILURES_SUFFIX}").exists()  # only a child with a failure writes one
    main.segment_paths.extend([f"{base}.dl0.i0.w0", f"{base}.dl0.i0.w1"])
    main._merge_children()
    assert main.hook_failures == ["dl0.i0.w0: DataLoader worker batches: RuntimeError: no repr"]
    assert not (tmp_path / f"seg.dl0.i0.w0{FAILURES_SUFFIX}").exists()
    assert main.writer is not None
    main.writer.close({"complete": True})


def test_an_unreadable_failures_file_is_a_failure_itself(tmp_path: Path) -> None:
    main = Session("record", writer=TraceWriter(str(tmp_path / "main.zst"), {}), quiet=True)
    child = _recording_child(tmp_path / "seg", "w0")
    child.finish_child()
    (tmp_path / f"seg.w0{FAILURES_SUFFIX}").write_text("{not json")
    main.segment_paths.append(str(tmp_path / "seg.w0"))
    main._merge_children()
    assert len(main.hook_failures) == 1 and main.hook_failures[0].startswith("reading a child's hook failures: ")
    assert main.writer is not None
    main.writer.close({"complete": True})


def test_a_replay_reports_hook_failures_are_named_by_role(tmp_path: Path) -> None:
    report = tmp_path / "report.w0.json"
    trace = Trace(path="", header={}, events={"w0": {}}, end={"complete": True}, size=0)
    child = Session("replay", trace=trace, quiet=True, role="w0", settings={"report_path": str(report)})
    child.hook_failed("DataLoader worker seeds", KeyError("x"))
    child.finish_child()
    main = Session("replay", trace=Trace(path="", header={}, events={}, end={"complete": True}, size=0), quiet=True)
    main.report_paths.append(str(report))
    main._merge_children()
    assert main.hook_failures == ["w0: DataLoader worker seeds: KeyError: 'x'"]
    assert not report.exists()


def test_an_unreadable_replay_report_is_a_failure_and_a_missing_one_is_not(tmp_path: Path) -> None:
    # A report that is there but does not read: the child's checks are unknown, so the verdict
    # cannot vouch for them. A missing one: a child that did not finish, as a recording's
    # unfinished segment is dropped (the state checks decide).
    main = Session("replay", trace=Trace(path="", header={}, events={}, end={"complete": True}, size=0), quiet=True)
    (tmp_path / "report.w0.json").write_text('{"divergences": [')
    main.report_paths.extend([str(tmp_path / "report.w0.json"), str(tmp_path / "report.w1.json")])
    main._merge_children()
    assert len(main.hook_failures) == 1, main.hook_failures
    assert main.hook_failures[0].startswith("reading a child's replay report: JSONDecodeError: ")


def test_a_replay_report_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    trace = Trace(path="", header={}, events={"w0": {}}, end={"complete": True}, size=0)
    report = tmp_path / "gone" / "report.w0.json"  # its directory went first: the write fails
    child = Session("replay", trace=trace, quiet=True, role="w0", settings={"report_path": str(report)})
    child.finish_child()  # does not raise into the worker's exit
    assert not report.exists()
    written = tmp_path / "report.w1.json"
    child = Session("replay", trace=trace, quiet=True, role="w1", settings={"report_path": str(written)})
    child.finish_child()
    assert json.loads(written.read_text())["role"] == "w1"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
