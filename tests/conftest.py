"""Shared helpers: run scripts as real subprocesses through the installed `detrun` command."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
SCRIPTS = Path(__file__).resolve().parent / "e2e" / "scripts"


def detrun_command() -> list[str]:
    """Return the installed console script next to this interpreter (as a user would run it)."""
    beside = Path(sys.executable).with_name("detrun")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("detrun")
    return [found] if found else [sys.executable, "-m", "detrun"]


def run(args: list[str], *, cwd: Path | str | None = None, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a command with a clean, explicit environment and capture its output."""
    full_env = dict(os.environ)
    full_env.pop("PYTHONHASHSEED", None)
    full_env.update(env or {})
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def detrun(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run `detrun ARGS...`."""
    return run([*detrun_command(), *args], **kwargs)  # type: ignore[arg-type]


def python(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run plain `python ARGS...` with this interpreter."""
    return run([sys.executable, *args], **kwargs)  # type: ignore[arg-type]


def weights_sha(output: str) -> str:
    """Return the `weights sha256` a bundled example prints."""
    match = re.search(r"weights sha256 ([0-9a-f]{64})", output)
    assert match, f"no weights digest in output:\n{output}"
    return match.group(1)


def verdict(stderr: str) -> str:
    """Return the replay verdict line from detrun's stderr."""
    lines = [line for line in stderr.splitlines() if line.startswith("detrun: ") and
             any(word in line for word in ("REPRODUCED", "DIVERGED", "UNVERIFIED"))]
    assert lines, f"no verdict in stderr:\n{stderr}"
    return lines[-1]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Return an empty directory to run in."""
    return tmp_path
