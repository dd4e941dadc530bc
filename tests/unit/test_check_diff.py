"""`detrun check`'s criteria and verdict, and `diff --plot` without matplotlib, in process (no runs)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from detrun.check_criteria import TraceFacts, criteria, decide
from detrun.cli import main as cli_main
from detrun.compare import compare, render
from detrun.trace import TraceWriter

FACTS = TraceFacts(complete=True, reason="", steps=5, step_losses=5, step_digests=5, digest_every=1,
                   backward_losses=1, final_items=4, stdout_lines=2, exit_status=0, final_digest=0x1234)
CHECKS = {"steps": 5, "losses": 1, "final state": 1, "stdout lines": 2, "exit status": 1}


def _report(divergences: list[dict[str, object]] | None = None, verdict: str = "REPRODUCED",
            checks: dict[str, int] | None = None) -> dict[str, object]:
    return {"verdict": verdict, "line": verdict, "checks": dict(CHECKS if checks is None else checks),
            "divergences": divergences or []}


def _by_name(rows: list) -> dict[str, object]:  # type: ignore[type-arg]
    return {row.name: row for row in rows}


def test_every_criterion_holds_and_files_are_never_a_pass() -> None:
    rows = criteria(FACTS, [_report()])
    assert all(row.holds for row in rows if row.name != "files written")
    files = _by_name(rows)["files written"]
    assert files.checked is False and files.holds is None and files.result == "not checked"
    status, line = decide(FACTS, rows, [_report()], 2)
    assert status == "REPRODUCED" and "not checked: files written" in line


def test_a_step_divergence_fails_the_rows_of_what_differed() -> None:
    loss_only = {"kind": "step", "message": "loss recorded 1 got 2", "step": 3, "check": "state", "parts": ["loss"]}
    rows = _by_name(criteria(FACTS, [_report([loss_only], "DIVERGED")]))
    assert rows["loss at every step"].holds is False and rows["loss at every step"].step == 3
    assert rows["parameters during training"].holds is True
    missing_steps = {"kind": "step", "message": "the replay made 4 optimizer steps", "step": 4, "check": "state"}
    rows = _by_name(criteria(FACTS, [_report([missing_steps], "DIVERGED")]))
    assert rows["loss at every step"].holds is False and rows["parameters during training"].holds is False


def test_the_earliest_failure_names_the_verdict_and_a_later_replay_counts() -> None:
    late = {"kind": "stdout", "message": "stdout line 1 differs", "step": None, "check": "output"}
    early = {"kind": "step", "message": "parameter 'w' differs", "step": 2, "check": "state", "parts": ["parameters"]}
    reports = [_report(), _report([late, early], "DIVERGED")]
    rows = criteria(FACTS, reports)
    status, line = decide(FACTS, rows, reports, 3)
    assert status == "DIVERGED" and line.startswith("DIVERGED: parameters during training: replay 2 at step 2")


def test_unverified_when_a_replay_could_not_check_or_had_no_verdict() -> None:
    hook = _report(verdict="UNVERIFIED")
    assert decide(FACTS, criteria(FACTS, [hook]), [hook], 2)[0] == "UNVERIFIED"
    rows = criteria(FACTS, [None])  # the replay died before writing its report
    assert not any(row.holds for row in rows)
    assert decide(FACTS, rows, [None], 2)[0] == "UNVERIFIED"
    nothing = TraceFacts(True, "", 0, 0, 0, 1, 0, 0, 1, 0, None)
    empty = _report(checks={"stdout lines": 1, "exit status": 1})
    status, line = decide(nothing, criteria(nothing, [empty]), [empty], 2)
    assert status == "UNVERIFIED" and "no loss, parameter or final weight" in line


def _trace(path: Path, losses: list[float], digests: list[int], *, names: list[str] | None = None,
           lanes: list[bytes] | None = None, final: int = 7, hashseed: str = "1") -> str:
    writer = TraceWriter(str(path), {"script": {"name": "t.py"}, "settings": {"hashseed": hashseed}})
    if names is not None:
        writer.event("step.names", [0, names])
    for i, (loss, digest) in enumerate(zip(losses, digests)):
        writer.event("step", [0, loss, digest, lanes[i] if lanes else bytes(4)])  # 2 lanes of 2 bytes
    writer.event("final.state", {"items": [["module#0:Linear", final, "module #0 (Linear)"]]})
    writer.close({"complete": True, "exit_status": 0, "steps": len(losses)})
    return str(path)


def test_diff_aligns_by_offset_and_names_parameters(tmp_path: Path) -> None:
    full = _trace(tmp_path / "a.zst", [4.0, 3.0, 2.0, 1.0], [1, 2, 3, 4], names=["w", "b"])
    resumed = _trace(tmp_path / "b.zst", [2.0, 1.0], [3, 4], names=["w", "b"], hashseed="2")
    assert compare(full, full).status == "equal"
    aligned = compare(full, resumed, offset_b=2)
    assert aligned.status == "equal" and aligned.compared == 2 and aligned.exit_code == 0
    assert [c.what for c in aligned.settings] == ["setting hashseed"]
    unaligned = compare(full, resumed)
    assert unaligned.status == "differ" and unaligned.first is not None and unaligned.first.step == 1
    assert unaligned.length == "A made 4 optimizer steps, B 2"
    lanes = [bytes(4), b"\x00\x00\x00\x05"]  # lane 1 (parameter 'b') differs at B's step 2
    changed = _trace(tmp_path / "c.zst", [2.0, 1.0], [3, 5], names=["w", "b"], lanes=lanes)
    found = compare(full, changed, offset_b=2)
    assert found.first is not None and (found.first.step, found.first.step_b) == (4, 2)
    assert found.first.parts == ["parameters"] and "parameter 'b' differs" in found.first.message
    assert "step 4 (B's step 2)" in "\n".join(render(found))


def test_diff_without_names_gives_positions_and_compares_the_final_state(tmp_path: Path) -> None:
    a = _trace(tmp_path / "a.zst", [1.0], [1], lanes=[bytes(32)])
    b = _trace(tmp_path / "b.zst", [1.0], [2], lanes=[bytes([0, 0, 0, 0, 0, 9] + [0] * 26)], final=8)
    result = compare(a, b)
    assert result.first is not None and "lane #2 of 16" in result.first.message
    assert result.final == "1 of 1 items differ: module #0 (Linear)"
    assert compare(a, a).final is None and compare(a, a).final_compared


def test_diff_plot_without_matplotlib_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a = _trace(tmp_path / "a.zst", [1.0], [1])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    result = CliRunner().invoke(cli_main, ["diff", "--plot", str(tmp_path / "p.png"), a, a])
    assert result.exit_code == 2
    assert result.stderr.strip() == "detrun: error: --plot needs matplotlib: pip install 'detrun[plot]'"
    assert not (tmp_path / "p.png").exists()


def test_diff_reads_lanes_as_the_step_check_writes_them() -> None:
    from detrun import compare as compare_module
    from detrun.engine.sources.torch_steps import LANES

    assert compare_module.LANES == LANES
