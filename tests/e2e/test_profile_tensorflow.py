"""`detrun profile` on a TensorFlow script picks the TF profiler and lists the ops its knowledge base flags."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SCRIPTS, detrun

pytest.importorskip("tensorflow")


def test_detrun_profile_on_a_tensorflow_script(tmp_path: Path) -> None:
    script = SCRIPTS / "tf_flagged_ops.py"
    result = detrun("profile", "--json", str(tmp_path / "p.json"), str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "flagged TensorFlow ops" in result.stderr
    document = json.loads((tmp_path / "p.json").read_text())
    assert document["framework"] == "tensorflow" and document["schema_version"] == 1
    ops = {entry["op"]: entry for entry in document["ops"]}
    assert {"UnsortedSegmentSum", "ResizeBilinearGrad"} <= set(ops)
    source_lines = script.read_text().splitlines()
    resize_line = ops["ResizeBilinearGrad"]["call_site"]["line"]
    assert "tf.image.resize" in source_lines[resize_line - 1]
