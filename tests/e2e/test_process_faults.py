"""Runs that die: signals to the parent, the child or the group, racing recorders, detrun's own bugs.

Every case ends with a readable (possibly incomplete) trace or a clear message, never a traceback,
and with the exit status a shell expects.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import detrun, detrun_command, python

# Emits events for a few seconds after saying it is ready, then exits normally: a child that
# outlived a killed parent would go on to write a complete trace.
LOOP = (
    "import random, sys, time\n"
    "print('ready', flush=True)\n"
    "deadline = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < deadline:\n"
    "    random.seed(); time.sleep(0.01)\n"
    "print('finished', flush=True)\n"
)


def _start(tmp_path: Path, seconds: float = 30) -> subprocess.Popen[str]:
    """Start `detrun record loop.py` in a session of its own, once the script is running."""
    (tmp_path / "loop.py").write_text(LOOP)
    # A killed detrun cannot remove its private scratch directory: keep that in pytest's tree.
    scratch = tmp_path.parent / f"{tmp_path.name}-scratch"
    scratch.mkdir()
    process = subprocess.Popen([*detrun_command(), "record", "loop.py", str(seconds)], cwd=tmp_path,
                               env={**os.environ, "TMPDIR": str(scratch)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    return process


def _child_of(pid: int) -> int:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 1, f"expected one child interpreter, found {children}"
    return int(children[0])


def _alive(pid: int) -> bool:
    """Return whether a process exists and is not a zombie waiting for a reaper."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _shell_status(returncode: int) -> int:
    """Return the status a shell's $? shows for a subprocess return code."""
    return 128 - returncode if returncode < 0 else returncode


@pytest.mark.parametrize("target", ["parent", "child", "group"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_signals_leave_a_readable_trace_or_nothing_and_the_shell_status(tmp_path: Path, target: str,
                                                                        signum: signal.Signals) -> None:
    process = _start(tmp_path)
    child = _child_of(process.pid)
    if target == "parent":
        os.kill(process.pid, signum)
    elif target == "child":
        os.kill(child, signum)
    else:
        os.killpg(process.pid, signum)
    _, stderr = process.communicate(timeout=30)
    assert "Traceback" not in stderr, stderr
    assert _shell_status(process.returncode) == 128 + signum, (process.returncode, stderr)
    if target == "child" and signum == signal.SIGKILL:
        assert process.returncode == 137  # SIGKILL cannot be re-raised by the parent: 128+9
    if signum == signal.SIGKILL and target != "child":
        # detrun itself was killed: nothing salvaged, and the child is gone with it.
        deadline = time.monotonic() + 3
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived its killed parent"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["loop.py"]
        # Its scratch directory is left behind, and the next run removes it.
        scratch = tmp_path.parent / f"{tmp_path.name}-scratch"
        assert [p.name.split("-")[1] for p in scratch.iterdir()] == [str(process.pid)]
        detrun("record", "-q", "-o", "again.zst", "loop.py", "0", cwd=tmp_path, env={"TMPDIR": str(scratch)})
        assert list(scratch.iterdir()) == []
        return
    assert f"killed by {signum.name}; the incomplete trace" in stderr, stderr
    shown = detrun("show", "trace.zst", cwd=tmp_path)
    assert shown.returncode == 0 and "INCOMPLETE" in shown.stdout and f"killed by {signum.name}" in shown.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop.py", "trace.zst"]


def test_child_of_a_killed_parent_never_writes_a_trace_later(tmp_path: Path) -> None:
    process = _start(tmp_path, seconds=1.5)
    child = _child_of(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    deadline = time.monotonic() + 2
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    time.sleep(2.5)  # past the moment the script would have finished and written its trace
    assert not (tmp_path / "trace.zst").exists()
    assert process.stdout is not None and "finished" not in process.stdout.read()


def test_shell_sees_137_and_143_when_the_child_is_killed(tmp_path: Path) -> None:
    (tmp_path / "loop.py").write_text(LOOP)
    command = " ".join(detrun_command())
    for signum, expected in ((signal.SIGKILL, 137), (signal.SIGTERM, 143)):
        shell = subprocess.Popen(["bash", "-c", f"{command} record -q -f loop.py 30; echo status=$? >&2"],
                                 cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert shell.stdout is not None and shell.stdout.readline() == "ready\n"
        os.kill(_child_of(_child_of(shell.pid)), signum)
        _, stderr = shell.communicate(timeout=30)
        assert stderr.strip().splitlines()[-1] == f"status={expected}", stderr
        assert "Traceback" not in stderr


def test_parent_pipe_watcher_kills_the_child_when_the_parent_goes(tmp_path: Path) -> None:
    # How the child dies with detrun: end-of-file on the pipe whose only writer is the launcher.
    read_end, write_end = os.pipe()
    watcher = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom detrun._child import watch_parent\n"
                               "watch_parent(int(sys.argv[1])); print('watching', flush=True); time.sleep(30)",
         str(read_end)], pass_fds=(read_end,), stdout=subprocess.PIPE, text=True)
    os.close(read_end)
    assert watcher.stdout is not None and watcher.stdout.readline() == "watching\n"
    os.close(write_end)
    assert watcher.wait(timeout=5) == -signal.SIGKILL


BARRIER = (
    "import os, sys, time\n"
    "me, other = sys.argv[1], {'a': 'b', 'b': 'a'}[sys.argv[1]]\n"
    "open(me + '.ready', 'w').close()\n"
    "deadline = time.monotonic() + 60\n"
    "while not os.path.exists(other + '.ready') and time.monotonic() < deadline:\n"
    "    time.sleep(0.01)\n"
    "time.sleep(0.2 if me == 'b' else 0)\n"
    "print(me)\n"
)


@pytest.fixture(params=["same", "other"])
def scratch_filesystem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Return the environment that puts detrun's scratch directory on the output's file system or another."""
    if request.param == "same":
        yield {}
        return
    if not os.access("/dev/shm", os.W_OK) or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system to put the scratch directory on")
    scratch = tempfile.mkdtemp(dir="/dev/shm")
    yield {"TMPDIR": scratch}
    assert os.listdir(scratch) == []
    os.rmdir(scratch)


def test_two_recordings_racing_for_one_output_lose_nothing(tmp_path: Path, scratch_filesystem: dict[str, str]) -> None:
    (tmp_path / "race.py").write_text(BARRIER)
    env = {**os.environ, **scratch_filesystem}
    runs = {name: subprocess.Popen([*detrun_command(), "record", "race.py", name], cwd=tmp_path, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in "ab"}
    results = {name: run.communicate(timeout=120) + (run.returncode,) for name, run in runs.items()}
    assert sorted(code for _, _, code in results.values()) == [0, 2], results
    loser = next(name for name, (_, _, code) in results.items() if code == 2)
    winner = "b" if loser == "a" else "a"
    lines = results[loser][1].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detrun: error: trace.zst was created by another run"), lines
    kept = lines[0].split("is kept as ")[1].split(" ")[0]
    assert kept != "trace.zst" and (tmp_path / kept).exists()
    for path, name in (("trace.zst", winner), (kept, loser)):
        shown = detrun("show", "--json", path, cwd=tmp_path)
        assert shown.returncode == 0 and json.loads(shown.stdout)["argv"] == [name], shown.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.ready", "b.ready", "race.py", "trace.zst", kept])

    forced = detrun("record", "-q", "--force", "race.py", "a", cwd=tmp_path, env=scratch_filesystem)
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.ready", "b.ready", "race.py", "trace.zst", kept])


def _crash_line(stderr: str, fragment: str) -> Path:
    """Check the one internal-error line and return its report file (removed after reading)."""
    lines = [line for line in stderr.splitlines() if line.startswith("detrun: internal error: ")]
    assert len(lines) == 1 and fragment in lines[0], stderr
    assert "Traceback" not in stderr
    report = Path(lines[0].rsplit("(details in ", 1)[1].rstrip(")"))
    assert report.name.startswith("detrun-crash-") and report.exists()
    return report


def test_exception_in_the_cli_is_one_line_a_report_and_exit_70(tmp_path: Path) -> None:
    code = ("import detrun.launch\n"
            "def broken(*args, **kwargs):\n"
            "    raise KeyError('a bug in detrun')\n"
            "detrun.launch.record = broken\n"
            "from detrun.cli import main\n"
            "main(['record', 's.py'], prog_name='detrun')\n")
    (tmp_path / "s.py").write_text("print('hi')\n")
    result = python("-c", code, cwd=tmp_path)
    assert result.returncode == 70, result.stderr
    report = _crash_line(result.stderr, "KeyError: 'a bug in detrun' (details in ")
    try:
        assert "Traceback" in report.read_text() and "broken" in report.read_text()
    finally:
        report.unlink()


def test_exception_in_the_childs_setup_or_finish_is_exit_70(tmp_path: Path) -> None:
    setup = python("-m", "detrun._child", env={"DETRUN_CHILD_CONFIG": '{"mode": "record"}'})
    assert setup.returncode == 70, setup.stderr
    _crash_line(setup.stderr, "KeyError: 'target'").unlink()

    # A bug in finishing the recording, after the script ran: the script's output is intact, the
    # error is one line, and the parent still salvages what was flushed.
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import os\n"
        "if 'DETRUN_CHILD_CONFIG' in os.environ:\n"
        "    from detrun.engine.session import Session\n"
        "    def broken(self, outcome):\n"
        "        raise RuntimeError('injected')\n"
        "    Session._finish_record = broken\n")
    (tmp_path / "s.py").write_text("print('the script ran')\n")
    finish = detrun("record", "s.py", cwd=tmp_path, env={"PYTHONPATH": str(inject)})
    assert finish.returncode == 70, finish.stderr
    assert finish.stdout == "the script ran\n"
    report = _crash_line(finish.stderr, "RuntimeError: injected")
    try:
        assert "RuntimeError: injected" in report.read_text() and "broken" in report.read_text()
    finally:
        report.unlink()
    assert detrun("show", "trace.zst", cwd=tmp_path).returncode == 0


def test_sweep_removes_only_scratch_directories_of_dead_unlocked_runs(tmp_path: Path) -> None:
    import fcntl

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    never_a_pid = 2**22 + 1  # above the largest pid_max Linux allows
    live = scratch / f"detrun-{os.getpid()}-live"
    locked = scratch / f"detrun-{never_a_pid}-locked"  # as a live run in another pid namespace holds it
    stale = scratch / f"detrun-{never_a_pid}-stale"
    other = scratch / "detrun-notes"
    for directory in (live, locked, stale, other):
        directory.mkdir()
    lock = os.open(locked, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        (tmp_path / "s.py").write_text("print('ok')\n")
        result = detrun("record", "-q", "s.py", cwd=tmp_path, env={"TMPDIR": str(scratch)})
        assert result.returncode == 0, result.stderr
    finally:
        os.close(lock)
    assert sorted(p.name for p in scratch.iterdir()) == sorted([live.name, locked.name, other.name])


# Trains a little; with CRASH_AT_EXIT=1 it dies of SIGABRT once the interpreter starts to exit, as a
# native library's heap corruption did at exit on a GPU machine (benchmarks/results/gpu_quick_*.md).
CRASH_AT_EXIT = (
    "import atexit, os, signal, torch\n"
    "if os.environ.get('CRASH_AT_EXIT') == '1':\n"
    "    atexit.register(lambda: os.kill(os.getpid(), signal.SIGABRT))\n"
    "model = torch.nn.Linear(4, 1)\n"
    "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n"
    "for _ in range(3):\n"
    "    loss = model(torch.randn(8, 4)).pow(2).mean()\n"
    "    optimizer.zero_grad(); loss.backward(); optimizer.step()\n"
)


def test_a_replay_killed_after_its_verdict_says_so(tmp_path: Path) -> None:
    (tmp_path / "crash.py").write_text(CRASH_AT_EXIT)
    assert detrun("record", "-q", "crash.py", cwd=tmp_path).returncode == 0
    died = detrun("replay", "trace.zst", "crash.py", cwd=tmp_path, env={"CRASH_AT_EXIT": "1"})
    assert died.returncode in (-signal.SIGABRT, 128 + signal.SIGABRT), died.stderr
    assert "detrun: REPRODUCED (3 steps" in died.stderr  # reached before the interpreter began to exit
    assert died.stderr.splitlines()[-1] == (
        "detrun: the replay was killed by SIGABRT; a verdict printed above covers the run up to that point, "
        "and the exit status is the signal's"), died.stderr
