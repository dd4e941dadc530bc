"""Start-up work moved off the critical path still happens: the fingerprint reaches the trace, a failure stops the run."""
from __future__ import annotations

import json
import platform
from pathlib import Path

from conftest import detrun, python


def test_the_fingerprint_computed_while_the_child_starts_is_in_the_header(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text('print("hello")\n')
    result = detrun("record", "-q", "hello.py", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == "hello\n", result.stderr
    shown = detrun("show", "--json", "trace.zst", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    env = json.loads(shown.stdout)["env"]
    assert env["python"]["version"] == platform.python_version()
    assert env["packages"].endswith("packages)") and env["git"] and env["cpu"]


def test_a_failing_fingerprint_stops_the_run_before_the_script(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text("open('ran', 'w').close()\n")
    code = ("import detrun.launch\n"
            "def broken(*args, **kwargs):\n"
            "    raise KeyError('a bug in the fingerprint')\n"
            "detrun.launch.fingerprint = broken\n"
            "from detrun.cli import main\n"
            "main(['record', 's.py'], prog_name='detrun')\n")
    result = python("-c", code, cwd=tmp_path)
    assert result.returncode == 70, result.stderr
    line = next(line for line in result.stderr.splitlines() if "KeyError: 'a bug in the fingerprint'" in line)
    Path(line.rsplit("(details in ", 1)[1].rstrip(")")).unlink()  # the crash report
    assert not (tmp_path / "ran").exists() and not (tmp_path / "trace.zst").exists()
