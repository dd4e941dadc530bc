"""The profiler's shared path, in-process: one knowledge-base loader, TensorFlow records through the shared report, the step limit."""
from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from detrun.engine.step_clock import StepClock
from detrun.profiler import report
from detrun.profiler.kb import KnowledgeBase
from detrun.profiler.step_limit import StepLimit, StepLimitReached
from detrun.profiler.tf_profile import merge_runs
from support.profile_schema import documented_schema, validate


def _run(ops: dict[str, int], raised: tuple[str, ...] = (), ran_on: tuple[str, ...] = ("cpu",)) -> dict:
    """Return a capture as the TensorFlow worker writes it."""
    site = {"file": "/work/train.py", "line": 7, "function": "step", "count": 1}
    return {"ops": {op: {"count": n, "phases": ["forward"], "names": [f"model/{op}"], "dtypes": ["float32"],
                         "sites": [site]} for op, n in ops.items()},
            "raised": [{"op": op, "message": "cannot be called when determinism is enabled"} for op in raised],
            "steps": 2, "stopped_by_limit": True, "ran_on": list(ran_on), "exit_status": 0}


def test_one_loader_reads_both_knowledge_bases_with_unknown_claims_kept_unknown() -> None:
    tf = KnowledgeBase.load(None, framework="tensorflow")
    assert tf.framework == "tensorflow" and tf.path.endswith("tensorflow.json")
    resize = tf.match("cuda", "ResizeBilinearGrad", "default", {})
    assert resize.nondeterministic and resize.raises_in_det_mode is False and resize.det_mode_fixes is True
    assert tf.match("cpu", "ResizeBilinearGrad", "default", {}).nondeterministic is False
    sparse = tf.match("cuda", "SparseSegmentSumGrad", "default", {})
    assert sparse.raises_in_det_mode is None and sparse.det_mode_fixes is None
    assert sparse.to_json()["tensorflow"] == ">=2.6"
    old = KnowledgeBase.load("2.3.0", framework="tensorflow")
    assert old.match("cuda", "UnsortedSegmentSum", "default", {}) is None  # ">=2.7" only
    assert KnowledgeBase.load("2.13.0").framework == "torch"


def test_tensorflow_records_go_through_the_shared_report(tmp_path) -> None:
    kb = KnowledgeBase.load(None, framework="tensorflow")
    runs = [_run({"UnsortedSegmentSum": 2, "Const": 9}, raised=("Timestamp",)),
            _run({"UnsortedSegmentSum": 2, "SparseSegmentSumGrad": 1})]
    records = merge_runs(runs, kb, "cuda")
    findings = report.build_findings(records, "cuda", with_patches=False)
    assert [f.op for f in findings] == ["Timestamp", "UnsortedSegmentSum", "SparseSegmentSumGrad", "Const"]
    timestamp, segment, sparse, const = findings
    assert timestamp.severity == report.RAISES and timestamp.unpatched_nondeterministic
    assert "raised-here" in timestamp.sources and timestamp.record.extra_json()["raised_here"]
    assert segment.record.count == 2 and not segment.unpatched_nondeterministic  # op determinism fixes it
    assert not sparse.unpatched_nondeterministic and sparse.det_mode_text() == "unknown"  # not established
    assert const.severity == report.UNKNOWN and const.rule is None
    result = report.Report(findings=findings, target={"name": "train.py", "args": [], "module": False,
                                                      "path": "/work/train.py"},
                           reported_device="cuda", ran_on=["cpu"], steps={"limit": 2, "completed": 2,
                                                                          "stopped_by_limit": True},
                           exit_status=0, empirical={"enabled": False, "signatures_checked": 0, "seconds": 0.0},
                           kb={"file": kb.path, "torch_version": None, "framework_version": None,
                               "rules_in_range": len(kb.rules)},
                           hook_errors=[], torch_version=None, gpu=None, framework=report.TENSORFLOW)
    document = result.to_json()
    validate(document, documented_schema())
    assert document["summary"]["raises"] == 1 and document["summary"]["unpatched"] == 1
    # Timestamp raised here (may change, nothing fixes it); SparseSegmentSumGrad: op determinism's effect unknown.
    assert result.summary_line() == ("3 TensorFlow ops judged on GPU (predicted): 3 may change; "
                                     "fix: 1 det mode, 1 unknown, 1 none")
    assert [(f.op, f.verdict, f.fix) for f in result.rows()] == [
        ("Timestamp", "may change", "none"), ("SparseSegmentSumGrad", "may change", "unknown"),
        ("UnsortedSegmentSum", "may change", "det mode")]


def test_step_limit_stops_on_the_main_thread_or_defers_from_another() -> None:
    clock = StepClock(lambda where, exc: None)
    limit = StepLimit(clock, 2)
    clock.tick()
    with pytest.raises(StepLimitReached):
        clock.tick()
    assert limit.stopped and limit.steps == 2

    clock = StepClock(lambda where, exc: None)
    deferred = StepLimit(clock, 1, defer_off_main_thread=True)
    worker = threading.Thread(target=clock.tick)
    worker.start()
    worker.join()
    assert deferred.pending
    with pytest.raises(StepLimitReached):
        deferred.stop_if_pending()
    deferred.stop_if_pending()  # raised once


def test_the_tensorflow_profile_parent_imports_neither_framework() -> None:
    code = ("import sys, detrun.profiler.tf_profile, detrun.cli.profile_cmd\n"
            "print('torch' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
