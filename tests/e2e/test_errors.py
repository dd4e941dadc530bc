"""Bad input gets one `detrun:` line and a documented exit code, never a traceback."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import detrun, detrun_command
from detrun.trace import TraceWriter

BAD_INPUT = 2


def _one_error_line(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == BAD_INPUT, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("detrun: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    script = tmp_path / "s.py"
    script.write_text("import random, sys\nprint(random.random(), sys.argv[1:])\n")
    assert detrun("record", "-q", str(script), "one", cwd=tmp_path).returncode == 0
    return tmp_path


def test_missing_script(tmp_path: Path) -> None:
    _one_error_line(detrun("record", "nope.py", cwd=tmp_path), "no such script: nope.py")
    _one_error_line(detrun("record", "-m", "no_such_module_xyz", cwd=tmp_path), "no module named 'no_such_module_xyz'")


def test_missing_trace(tmp_path: Path) -> None:
    _one_error_line(detrun("replay", "absent.zst", cwd=tmp_path), "no such trace: absent.zst")
    _one_error_line(detrun("show", "absent.zst", cwd=tmp_path), "no such trace: absent.zst")


def test_foreign_trace(recorded: Path) -> None:
    (recorded / "foreign.zst").write_text("just some text\n")
    for command in ("show", "replay"):
        _one_error_line(detrun(command, "foreign.zst", cwd=recorded), "not a detrun trace")


def test_foreign_zstd_stream(recorded: Path) -> None:
    import zstandard

    (recorded / "other.zst").write_bytes(zstandard.ZstdCompressor().compress(b"\x93\x01\x02\x03"))
    _one_error_line(detrun("show", "other.zst", cwd=recorded), "not a detrun trace (foreign header)")


def test_corrupt_trace(recorded: Path) -> None:
    data = bytearray((recorded / "trace.zst").read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = b"\xff" * 16
    (recorded / "corrupt.zst").write_bytes(bytes(data))
    for command in ("show", "replay"):
        _one_error_line(detrun(command, "corrupt.zst", cwd=recorded), "is corrupt")


def test_truncated_trace(recorded: Path) -> None:
    data = (recorded / "trace.zst").read_bytes()
    (recorded / "cut.zst").write_bytes(data[: len(data) * 2 // 3])
    for command in ("show", "replay"):
        _one_error_line(detrun(command, "cut.zst", cwd=recorded), "is truncated")


def test_newer_version_trace(tmp_path: Path) -> None:
    writer = TraceWriter(str(tmp_path / "new.zst"), {"version": 99})
    writer.close({"complete": True})
    for command in ("show", "replay"):
        _one_error_line(detrun(command, "new.zst", cwd=tmp_path), "written by a newer detrun (trace format 99")


def test_changed_script_is_refused_unless_allowed(recorded: Path) -> None:
    script = recorded / "s.py"
    script.write_text(script.read_text() + "# edited\n")
    _one_error_line(detrun("replay", "trace.zst", cwd=recorded), "changed since it was recorded")
    allowed = detrun("replay", "--allow-changed-script", "trace.zst", "s.py", cwd=recorded)
    assert allowed.returncode == 5, allowed.stderr  # it ran: UNVERIFIED, the script trains nothing


def test_existing_output_is_not_overwritten(recorded: Path) -> None:
    before = (recorded / "trace.zst").read_bytes()
    _one_error_line(detrun("record", "s.py", "one", cwd=recorded), "trace.zst exists; pass --force")
    assert (recorded / "trace.zst").read_bytes() == before
    assert detrun("record", "-q", "--force", "s.py", "one", cwd=recorded).returncode == 0


def test_changed_arguments_are_refused_and_absent_ones_are_recorded_ones(recorded: Path) -> None:
    _one_error_line(detrun("replay", "trace.zst", "s.py", "two", cwd=recorded), "differ from the recorded ['one']")
    same = detrun("replay", "trace.zst", "s.py", cwd=recorded)
    assert same.returncode == 5 and "['one']" in same.stdout, same.stderr  # ran; nothing to verify


def test_no_trace_left_behind_on_bad_input(tmp_path: Path) -> None:
    detrun("record", "nope.py", cwd=tmp_path)
    assert list(tmp_path.iterdir()) == []


LOOP = (
    "import torch, time\n"
    "p = torch.nn.Parameter(torch.zeros(3))\n"
    "opt = torch.optim.SGD([p], lr=0.1)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    loss = (p - torch.rand(3)).pow(2).sum()\n"
    "    opt.zero_grad(); loss.backward(); opt.step()\n"
    "    time.sleep(0.001)\n"
)


@pytest.mark.parametrize("signum,reason", [(signal.SIGTERM, "killed by SIGTERM"), (signal.SIGINT, "interrupted")])
def test_killed_recording_leaves_a_readable_incomplete_trace(tmp_path: Path, signum: int, reason: str) -> None:
    (tmp_path / "loop.py").write_text(LOOP)
    process = subprocess.Popen([*detrun_command(), "record", "-q", "loop.py"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    time.sleep(2.5)  # long enough for at least one timed flush of the trace
    if signum == signal.SIGINT:
        # Ctrl-C reaches the whole foreground process group; deliver it to the child as a terminal would.
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        assert children, "the recording has no child interpreter"
        for child in children:
            os.kill(int(child), signal.SIGINT)
    else:
        process.send_signal(signum)
    process.communicate(timeout=60)
    assert process.returncode != 0
    shown = detrun("show", "trace.zst", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "INCOMPLETE" in shown.stdout and reason in shown.stdout, shown.stdout
    steps = int(next(line for line in shown.stdout.splitlines() if line.startswith("steps")).split()[1])
    assert steps > 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_show_json(recorded: Path) -> None:
    import json

    result = detrun("show", "--json", "trace.zst", cwd=recorded)
    summary = json.loads(result.stdout)
    assert summary["complete"] is True and summary["argv"] == ["one"]
    assert summary["events"]["main"]["py.seed"] >= 1
    assert summary["env"]["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
