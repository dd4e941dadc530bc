"""Step events' lanes: version 2 names the changed parameter where version 1 went blind, and a
version-1 trace is still read, replayed and diffed with its own one-byte lanes."""
from __future__ import annotations

import random
from pathlib import Path

from detrun.compare import compare
from detrun.engine.session import Session
from detrun.engine.sources.torch_steps import check_step, lane_width, step_payload
from detrun.trace import TraceWriter, read_trace
from detrun.trace.format import DECLARE_KIND, END, FIRST_USER_KIND, FORMAT_NAME, FORMAT_VERSION
from detrun.trace.writer import write_objects

NAMES = ["fc1.weight", "fc1.bias", "fc2.weight"]
MASK64 = (1 << 64) - 1


def _session(tmp_path: Path, trace_path: str | None = None) -> Session:
    if trace_path is None:
        return Session("record", writer=TraceWriter(str(tmp_path / "w.zst"), {}), quiet=True)
    return Session("replay", trace=read_trace(trace_path), quiet=True)


def _v1_trace(path: Path, lanes: bytes, digest: int) -> str:
    """Write a trace as detrun wrote them before version 2: `step` declared without a version."""
    write_objects(str(path), [
        {"format": FORMAT_NAME, "version": FORMAT_VERSION, "script": {"name": "t.py"}, "settings": {}},
        [DECLARE_KIND, [FIRST_USER_KIND, "step"]],
        [FIRST_USER_KIND, [0, 1.0, digest, lanes]],
        [END, {"complete": True, "exit_status": 0, "steps": 1}],
    ])
    return str(path)


def _differing(before: list[int], after: list[int], width: int, tmp_path: Path) -> str:
    """Return how a replay of a trace whose lanes are `width` bytes names the parameters whose sums changed."""
    trace = _v1_trace(tmp_path / "r1.zst", b"", 1) if width == 1 else _v2_trace(tmp_path / "r2.zst")
    replay = _session(tmp_path, trace)
    assert lane_width(replay, "step") == width
    recorded = step_payload(replay, 0, 1.0, before, width)
    check_step(replay, "step", recorded, 5, step_payload(replay, 0, 1.0, after, width), NAMES)
    assert replay.divergences, "a changed digest must diverge"
    return replay.divergences[-1].message


def _v2_trace(path: Path) -> str:
    writer = TraceWriter(str(path), {"script": {"name": "t.py"}, "settings": {}})
    writer.event("step", [0, 1.0, 1, bytes(6)])
    writer.close({"complete": True, "exit_status": 0, "steps": 1})
    return str(path)


def test_a_change_in_the_upper_half_of_a_word_is_named_where_version_1_was_blind(tmp_path: Path) -> None:
    sums = [random.getrandbits(64) for _ in NAMES]
    changed = list(sums)
    changed[2] = (changed[2] + (1 << 40)) & MASK64  # an odd float32 of a pair: the low byte stays
    assert "parameter 'fc2.weight' differs" in _differing(sums, changed, 2, tmp_path)
    assert "the parameters differ" in _differing(sums, changed, 1, tmp_path)  # what version 1 said


def test_every_single_bit_change_names_its_parameter(tmp_path: Path) -> None:
    session = _session(tmp_path)
    sums = [random.getrandbits(64) for _ in NAMES]
    base = step_payload(session, 0, 1.0, sums, 2)[3]
    for bit in range(64):
        changed = list(sums)
        changed[1] ^= 1 << bit
        lanes = step_payload(session, 0, 1.0, changed, 2)[3]
        assert [i // 2 for i, (a, b) in enumerate(zip(base, lanes)) if a != b][:1] == [1], bit


def test_a_recording_writes_version_2_and_a_version_1_trace_replays_with_its_own_lanes(tmp_path: Path) -> None:
    recording = _session(tmp_path)
    assert recording.event_version("step") == 2 and lane_width(recording, "tf.step") == 2
    v2 = read_trace(_v2_trace(tmp_path / "v2.zst"))
    assert v2.version("step") == 2
    sums = [11, 22, 33]
    old_lanes = bytes(s & 0xFF for s in sums)  # version 1: the low byte of each sum
    path = _v1_trace(tmp_path / "v1.zst", old_lanes, step_payload(recording, 0, 1.0, sums, 1)[2])
    replay = _session(tmp_path, path)
    assert replay.trace is not None and replay.trace.version("step") == 1 and lane_width(replay, "step") == 1
    payload = step_payload(replay, 0, 1.0, sums, lane_width(replay, "step"))
    assert payload == list(replay.trace.of("step")[0])  # the replay's own payload equals the recorded one
    check_step(replay, "step", replay.trace.of("step")[0], 1, payload, NAMES)
    assert replay.divergences == []


def test_diff_compares_lanes_only_between_traces_of_one_version(tmp_path: Path) -> None:
    a = _v1_trace(tmp_path / "a.zst", bytes([1, 2, 3]), 10)
    b = _v1_trace(tmp_path / "b.zst", bytes([1, 9, 3]), 11)
    found = compare(a, b).first
    assert found is not None and found.lanes == [1], found
    newer = TraceWriter(str(tmp_path / "c.zst"), {"script": {"name": "t.py"}, "settings": {}})
    newer.event("step", [0, 1.0, 12, bytes([1, 0, 2, 0, 3, 0])])
    newer.close({"complete": True, "exit_status": 0, "steps": 1})
    mixed = compare(a, str(tmp_path / "c.zst")).first
    assert mixed is not None and mixed.lanes == [] and "detrun versions write lanes differently" in mixed.message
