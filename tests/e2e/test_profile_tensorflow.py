"""`detrun profile` on a TensorFlow script picks the TF capture and reports through the shared report: SCHEMA.md's JSON."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import SCRIPTS, detrun
from support.profile_schema import documented_schema, validate
from support.profile_text import assert_summary_matches_rows, messages

pytest.importorskip("tensorflow")

# TensorFlow's C++ logging, which its child process writes to stderr whatever detrun does.
_TF_LOG = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} \d\d:\d\d:\d\d)")


def test_detrun_profile_on_a_tensorflow_script(tmp_path: Path) -> None:
    script = SCRIPTS / "tf_flagged_ops.py"
    result = detrun("profile", "--json", "p.json", str(script), cwd=tmp_path, env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    # The shared renderer: 80 columns (TensorFlow's own log lines aside), rows counted by the summary,
    # how the script ended and where the JSON went.
    ours = [line for line in result.stderr.splitlines() if not _TF_LOG.match(line)]
    assert not [line for line in ours if len(line) > 80], "\n".join(ours)
    rows = assert_summary_matches_rows(result.stderr)
    assert [(r["op"], r["verdict"], r["fix"]) for r in rows] == [
        ("UnsortedSegmentSum", "may change", "det mode"), ("ResizeBilinearGrad", "may change", "det mode")]
    said = messages(result.stderr)
    assert "2 TensorFlow ops judged on GPU (predicted): 2 may change; fix: 2 det mode, 0 none" in said, said
    assert "script ended with status 0 after 3 training steps" in " ".join(said), said  # 3 steps < --steps 5
    assert said[-1] == "wrote p.json"
    assert "tf_flagged_ops.py:18 in step" in result.stderr  # relative to the script's folder (cwd is elsewhere)
    document = json.loads((tmp_path / "p.json").read_text())
    validate(document, documented_schema())
    assert document["framework"] == "tensorflow" and document["schema_version"] == 1
    assert document["torch_version"] is None and document["framework_version"]
    summary = document["summary"]
    assert summary["nondeterministic"] == 2 and summary["flagged"] == 2 and summary["unpatched"] == 0
    assert summary["distinct_ops"] == len(document["ops"])
    ops = {entry["op"]: entry for entry in document["ops"]}
    assert {"UnsortedSegmentSum", "ResizeBilinearGrad"} <= set(ops)
    assert [entry["severity"] for entry in document["ops"][:2]] == ["nondeterministic"] * 2  # worst first
    source_lines = script.read_text().splitlines()
    resize = ops["ResizeBilinearGrad"]
    assert "tf.image.resize" in source_lines[resize["call_site"]["line"] - 1]
    assert resize["kb"]["id"] == "ResizeBilinearGrad" and resize["kb"]["tensorflow"] == ">=2.4"
    assert resize["patch"] is None and resize["measured"] == [] and resize["raised_here"] is None
    assert any("ResizeBilinearGrad" in name for name in resize["graph_names"])


def test_fail_on_an_op_that_raises_under_op_determinism_exits_4(tmp_path: Path) -> None:
    result = detrun("profile", "--fail-on", "nondeterministic", "--json", str(tmp_path / "p.json"),
                    str(SCRIPTS / "tf_raises_under_determinism.py"), cwd=tmp_path)
    assert result.returncode == 4, result.stderr
    assert ("--fail-on nondeterministic: 1 ops still change bits or raise under op determinism; exiting with "
            "status 4") in messages(result.stderr)
    document = json.loads((tmp_path / "p.json").read_text())
    validate(document, documented_schema())
    timestamp = document["ops"][0]
    assert timestamp["op"] == "Timestamp" and timestamp["severity"] == "raises"
    assert "raised-here" in timestamp["source"] and document["summary"]["raises"] == 1
