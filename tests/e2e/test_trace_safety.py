"""A trace from a stranger can run no code, set no environment, and choose no path detrun writes.

Each exploit is a genuine trace whose header was edited the way a hostile sender would; each test
first shows the payload works when given directly, so it fails if detrun ever passes it on.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sysconfig
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import detrun, python, verdict
from detrun.trace.reader import salvage_objects
from detrun.trace.writer import write_objects

BAD_INPUT = 2
SCRIPT = "import os, random, sys\nprint(random.random(), os.environ.get('OMP_NUM_THREADS'), sys.argv[1:])\n"


def _edit_header(trace: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite a trace with its header changed by `edit`, keeping every event."""
    objects = salvage_objects(str(trace))
    edit(objects[0])
    trace.unlink()
    write_objects(str(trace), objects)


def _one_error_line(result: subprocess.CompletedProcess[str], fragment: str) -> str:
    assert result.returncode == BAD_INPUT, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detrun: error: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "Fatal Python error" not in result.stderr
    return lines[0]


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    """Return a directory holding s.py and its trace, recorded with the argument `one`."""
    (tmp_path / "s.py").write_text(SCRIPT)
    result = detrun("record", "-q", "s.py", "one", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path


def test_thread_env_cannot_set_pythonpath_or_ld_preload(recorded: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    evil = tmp_path_factory.mktemp("evil")
    marker = evil / "pwned"
    (evil / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    # The payload is live: the same variable given directly runs it.
    assert python("-c", "pass", env={"PYTHONPATH": str(evil)}).returncode == 0 and marker.exists()
    marker.unlink()

    def hostile(header: dict[str, Any]) -> None:
        header["settings"]["thread_env"].update(PYTHONPATH=str(evil), LD_PRELOAD="/nonexistent/evil.so",
                                                OMP_NUM_THREADS="3", MKL_NUM_THREADS="1; touch pwned")

    # First line of defence, the trace registry: such a trace is refused before anything runs.
    original = (recorded / "trace.zst").read_bytes()
    _edit_header(recorded / "trace.zst", hostile)
    for command in (["show", "trace.zst"], ["replay", "trace.zst", "s.py"]):
        refused = detrun(*command, cwd=recorded)
        assert refused.returncode == 2 and "header.settings.thread_env" in refused.stderr, refused.stderr
        assert not marker.exists(), "a trace ran code through PYTHONPATH"

    # Second line, the launcher: a well-formed *_THREADS name it does not pin is ignored, said once.
    (recorded / "trace.zst").write_bytes(original)
    _edit_header(recorded / "trace.zst", lambda header: header["settings"]["thread_env"].update(
        EVIL_THREADS="4", OMP_NUM_THREADS="3"))
    replayed = detrun("replay", "trace.zst", "s.py", cwd=recorded)
    warnings = [line for line in replayed.stderr.splitlines() if "ignored" in line]
    assert len(warnings) == 1 and warnings[0].startswith("detrun: warning: ignored 1 environment setting(s)"), \
        replayed.stderr
    assert "'EVIL_THREADS'" in warnings[0]
    # A listed variable with an integer value is still pinned.
    assert replayed.stdout.split()[1] == "3", replayed.stdout


@pytest.mark.parametrize("seed", ["abc", "4294967296", "-1", " 1", 12, None])
def test_invalid_hash_seed_is_one_line_and_exit_2(recorded: Path, seed: object) -> None:
    _edit_header(recorded / "trace.zst", lambda header: header["settings"].update(hashseed=seed))
    # The registry refuses it as it reads the header (the launcher would too: "invalid hash seed").
    _one_error_line(detrun("replay", "trace.zst", "s.py", cwd=recorded), "header.settings.hashseed")


def test_valid_hash_seed_at_the_top_of_the_range_replays(recorded: Path) -> None:
    _edit_header(recorded / "trace.zst", lambda header: header["settings"].update(hashseed=str(2**32 - 1)))
    result = detrun("replay", "trace.zst", "s.py", cwd=recorded)
    # It ran; the probe trains nothing, so the verdict is UNVERIFIED (5), not an error.
    assert result.returncode == 5 and "error" not in result.stderr, result.stderr


def test_replay_never_runs_a_module_the_trace_names(recorded: Path) -> None:
    timeit = Path(sysconfig.get_paths()["stdlib"]) / "timeit.py"
    payload = ["-n", "1", "-r", "1", "open('pwned', 'w').close()"]
    # The payload is live: python -m timeit runs it.
    assert python("-m", "timeit", *payload, cwd=recorded).returncode == 0 and (recorded / "pwned").exists()
    (recorded / "pwned").unlink()

    def hostile(header: dict[str, Any]) -> None:
        header["script"] = {"name": "timeit", "module": True, "path": str(timeit),
                            "sha256": hashlib.sha256(timeit.read_bytes()).hexdigest()}
        header["argv"] = payload

    _edit_header(recorded / "trace.zst", hostile)
    line = _one_error_line(detrun("replay", "trace.zst", cwd=recorded), "replay runs a module only when you name it")
    assert line.endswith("type: detrun replay -m trace.zst timeit -n 1 -r 1 'open('\"'\"'pwned'\"'\"', '\"'\"'w'\"'\"').close()'"), line
    assert not (recorded / "pwned").exists()


def test_replay_never_runs_a_script_outside_the_current_directory(recorded: Path) -> None:
    timeit = Path(sysconfig.get_paths()["stdlib"]) / "timeit.py"
    outside = recorded.parent / f"{recorded.name}-outside.py"
    outside.write_text("open('pwned', 'w').close()\n")
    try:
        for path in (timeit, outside, Path("..") / outside.name):
            def hostile(header: dict[str, Any], path: Path = path) -> None:
                real = path if path.is_absolute() else recorded / path
                header["script"] = {"name": str(path), "module": False, "path": str(real),
                                    "sha256": hashlib.sha256(real.read_bytes()).hexdigest()}
                header["argv"] = ["-n", "1", "-r", "1", "open('pwned', 'w').close()"]

            _edit_header(recorded / "trace.zst", hostile)
            _one_error_line(detrun("replay", "trace.zst", cwd=recorded), "is not under the current directory")
            assert not (recorded / "pwned").exists()
    finally:
        outside.unlink()


def test_replay_without_script_runs_the_recorded_file_here_and_prints_the_command(recorded: Path) -> None:
    result = detrun("replay", "trace.zst", cwd=recorded)
    assert result.returncode == 5, result.stderr  # it ran: UNVERIFIED, the script trains nothing
    assert "detrun: replaying: python s.py one\n" in result.stderr
    assert "DIVERGED" not in result.stderr and result.stdout.split()[-1] == "['one']", result.stdout
    quiet = detrun("replay", "-q", "trace.zst", cwd=recorded)
    assert "replaying:" not in quiet.stderr
    named = detrun("replay", "trace.zst", "s.py", cwd=recorded)
    assert "detrun: replaying: python s.py one\n" in named.stderr

    # A changed file is run only when the user names it.
    (recorded / "s.py").write_text(SCRIPT + "print('changed')\n")
    line = _one_error_line(detrun("replay", "--allow-changed-script", "trace.zst", cwd=recorded),
                           "changed since it was recorded")
    assert line.endswith("type: detrun replay --allow-changed-script trace.zst s.py"), line
    named = detrun("replay", "--allow-changed-script", "trace.zst", "s.py", cwd=recorded)
    # It ran the edited script, which prints one more line: an output check that differs.
    assert named.returncode == 3 and "changed" in named.stdout, named.stderr


def test_printed_command_escapes_control_characters(recorded: Path) -> None:
    _edit_header(recorded / "trace.zst", lambda header: header.update(argv=["\x1b[2Jx\ny"]))
    result = detrun("replay", "--allow-changed-args", "trace.zst", "s.py", cwd=recorded)
    assert "detrun: replaying: python s.py $'\\x1b[2Jx\\ny'\n" in result.stderr, result.stderr
    assert "\x1b" not in result.stderr


DATALOADER = """\
import os, sys, torch
from torch.utils.data import DataLoader, TensorDataset
loader = DataLoader(TensorDataset(torch.arange(8.0)), batch_size=2, shuffle=True, num_workers=2)
print([batch[0].tolist() for batch in loader])
print(sorted(os.listdir('.')))
"""


def test_trace_cannot_choose_where_replay_writes_or_deletes(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "data.py").write_text(DATALOADER)
    assert detrun("record", "-q", "data.py", cwd=work).returncode == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    precious = {f"x.report.dl0.i0.w{worker}.json": f"precious {worker}" for worker in range(2)}
    for name, text in precious.items():
        (victim / name).write_text(text)
    _edit_header(work / "trace.zst", lambda header: header["settings"].update(
        report_base=str(victim / "x"), report_path=str(victim / "y.json"), trace_path=str(victim / "z")))
    replayed = detrun("replay", "trace.zst", "data.py", cwd=work)
    # The registry refuses a trace that names a scratch path before anything runs.
    assert replayed.returncode == 2 and "report_base" in replayed.stderr, replayed.stderr
    assert {p.name: p.read_text() for p in victim.iterdir()} == precious


def test_temporary_files_are_invisible_to_the_scripts_listings(tmp_path: Path) -> None:
    (tmp_path / "data.py").write_text(DATALOADER)
    recorded = detrun("record", "-q", "data.py", cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    # Neither the trace being written nor the DataLoader workers' segments show in the listing.
    assert recorded.stdout.splitlines()[1] == "['data.py']", recorded.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.py", "trace.zst"]
    os.rename(tmp_path / "trace.zst", tmp_path.parent / f"{tmp_path.name}.zst")
    try:
        replayed = detrun("replay", str(tmp_path.parent / f"{tmp_path.name}.zst"), "data.py", cwd=tmp_path)
    finally:
        os.unlink(tmp_path.parent / f"{tmp_path.name}.zst")
    line = verdict(replayed.stderr)  # UNVERIFIED: no model; but no listing departed from the recording
    assert line.startswith("detrun: UNVERIFIED") and "departed" not in line, replayed.stderr
    assert replayed.stdout == recorded.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.py"]


def test_scratch_directory_is_private_and_removed(recorded: Path) -> None:
    (recorded / "where.py").write_text(
        "import os, sys\n"
        "from detrun.engine.session import active_session\n"
        "d = active_session().scratch_dir\n"
        "print(d, oct(os.stat(d).st_mode & 0o777))\n")
    result = detrun("record", "-q", "-o", "w.zst", "where.py", cwd=recorded)
    assert result.returncode == 0, result.stderr
    directory, mode = result.stdout.split()
    assert mode == "0o700" and not os.path.exists(directory)
    assert os.path.dirname(directory) != str(recorded)
