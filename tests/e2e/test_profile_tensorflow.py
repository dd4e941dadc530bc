"""`detrun profile` on a TensorFlow script picks the TF capture and reports through the shared report: SCHEMA.md's JSON."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SCRIPTS, detrun
from support.profile_schema import documented_schema, validate

pytest.importorskip("tensorflow")


def test_detrun_profile_on_a_tensorflow_script(tmp_path: Path) -> None:
    script = SCRIPTS / "tf_flagged_ops.py"
    result = detrun("profile", "--json", str(tmp_path / "p.json"), str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "distinct TensorFlow ops; can change bits on GPU (predicted): 2;" in result.stderr, result.stderr
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
            "status 4") in result.stderr
    document = json.loads((tmp_path / "p.json").read_text())
    validate(document, documented_schema())
    timestamp = document["ops"][0]
    assert timestamp["op"] == "Timestamp" and timestamp["severity"] == "raises"
    assert "raised-here" in timestamp["source"] and document["summary"]["raises"] == 1
