"""Progress goes to stderr only when it is a terminal, and -q silences it."""
from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

from conftest import EXAMPLES, detrun_command

EXAMPLE = str(EXAMPLES / "train_unseeded.py")


def _stderr_through_a_terminal(args: list[str], cwd: Path) -> str:
    """Run detrun with stderr on a pseudo-terminal and return what it wrote there."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    process = subprocess.Popen([*detrun_command(), *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO once the child side is closed
            break
        if not data:
            break
        chunks.append(data)
    process.wait(timeout=300)
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


def test_progress_line_on_a_terminal(tmp_path: Path) -> None:
    shown = _stderr_through_a_terminal(["record", EXAMPLE, "--steps", "2000"], tmp_path)
    assert "\rdetrun: recording · step " in shown, shown[-500:]
    assert "recorded 2000 steps" in shown
    quiet = _stderr_through_a_terminal(["record", "-q", "--force", EXAMPLE, "--steps", "2000"], tmp_path)
    assert "detrun:" not in quiet, quiet[-500:]
