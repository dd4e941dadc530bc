"""`detrun merge` refuses nodes whose traces write an event kind in different versions."""
from __future__ import annotations

from pathlib import Path

import pytest

from detrun.errors import TraceError
from detrun.trace import TraceWriter, registry
from detrun.trace.merge import merge_traces


def _node_trace(path: Path) -> str:
    writer = TraceWriter(str(path), {"script": {"name": "train.py"}, "argv": []})
    writer.event("dl.batch", [0, 0, 0, [7]])
    writer.close({"complete": True})
    return str(path)


def test_nodes_recorded_by_two_detrun_releases_are_not_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    new = _node_trace(tmp_path / "trace.node1.zst")
    with monkeypatch.context() as old_detrun:  # a release whose batch digests were crc32 (dl.batch version 1)
        old_detrun.setitem(registry.KINDS, "dl.batch", registry.KINDS["dl.batch"]._replace(version=1))
        old = _node_trace(tmp_path / "trace.node0.zst")
    with pytest.raises(TraceError, match=r"dl\.batch events of version (1|2) and .* of version (1|2): record every "
                                         r"node with one detrun release"):
        merge_traces([old, new], str(tmp_path / "trace.zst"))
    assert not (tmp_path / "trace.zst").exists()
    # The same release on both: the version check passes (and the next check sees two node-0 files).
    with pytest.raises(TraceError, match="both hold node 0"):
        merge_traces([new, _node_trace(tmp_path / "again.zst")], str(tmp_path / "trace.zst"))
