"""The runner is faithful: the script cannot tell detrun from plain `python`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SCRIPTS, detrun, python


def _detrun_lines_removed(stderr: str) -> str:
    return "".join(line for line in stderr.splitlines(keepends=True) if not line.startswith("detrun:"))


@pytest.fixture
def probe_dir(tmp_path: Path) -> Path:
    """Return a directory holding the probe as a script, a package's __main__ and a module."""
    source = (SCRIPTS / "probe.py").read_text()
    (tmp_path / "probe.py").write_text(source)
    package = tmp_path / "probepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(source)
    (package / "mod.py").write_text(source)
    return tmp_path


@pytest.mark.parametrize("how", [["probe.py", "a", "-x", "--flag=1"], ["-m", "probepkg.mod", "z"], ["-m", "probepkg"]])
def test_probe_sees_the_same_as_under_python(how: list[str], probe_dir: Path) -> None:
    plain = python(*how, cwd=probe_dir)
    recorded = detrun("record", "-q", "-o", "t.zst", *how, cwd=probe_dir)
    assert plain.returncode == recorded.returncode == 0, recorded.stderr
    assert json.loads(recorded.stdout) == json.loads(plain.stdout)
    # Replay runs a module only when the user names it.
    named = ["-m", "t.zst", how[1]] if how[0] == "-m" else ["t.zst", how[0]]
    replayed = detrun("replay", "-q", *named, cwd=probe_dir)
    assert json.loads(replayed.stdout) == json.loads(plain.stdout)


def test_script_given_by_relative_path_from_elsewhere(tmp_path: Path) -> None:
    relative = str(Path("tests") / "e2e" / "scripts" / "probe.py")
    repo = SCRIPTS.parents[2]
    plain = python(relative, cwd=repo)
    recorded = detrun("record", "-q", "-o", str(tmp_path / "t.zst"), relative, cwd=repo)
    assert json.loads(recorded.stdout) == json.loads(plain.stdout)


def test_traceback_has_no_detrun_frames_and_exit_status_is_the_scripts(tmp_path: Path) -> None:
    env = {"PROBE_EXIT": "raise"}
    plain = python("probe.py", cwd=SCRIPTS, env=env)
    recorded = detrun("record", "-o", str(tmp_path / "t.zst"), "probe.py", cwd=SCRIPTS, env=env)
    assert plain.returncode == recorded.returncode == 1
    assert "ValueError: boom from the probe" in plain.stderr
    assert _detrun_lines_removed(recorded.stderr) == plain.stderr
    assert "detrun/" not in recorded.stderr.replace("detrun: ", "")


@pytest.mark.parametrize("code,status", [("7", 7), ("0", 0), ("-1", 255), ("goodbye", 1)])
def test_sys_exit_passes_through(code: str, status: int, tmp_path: Path) -> None:
    env = {"PROBE_EXIT": code}
    plain = python("probe.py", cwd=SCRIPTS, env=env)
    recorded = detrun("record", "-q", "-f", "-o", str(tmp_path / "t.zst"), "probe.py", cwd=SCRIPTS, env=env)
    assert plain.returncode == recorded.returncode == status
    assert _detrun_lines_removed(recorded.stderr) == plain.stderr
    replayed = detrun("replay", "-q", str(tmp_path / "t.zst"), cwd=SCRIPTS, env=env)
    # A non-zero status is the script's own; after a clean exit the verdict decides, and the probe
    # trains nothing, so it is UNVERIFIED (5).
    assert replayed.returncode == (status or 5)
    assert "DIVERGED" not in replayed.stderr


def test_spawned_multiprocessing_child_imports_the_script_as_mp_main(tmp_path: Path) -> None:
    script = tmp_path / "spawner.py"
    script.write_text(
        "import multiprocessing as mp\n"
        "def work(x):\n"
        "    import sys\n"
        "    return (x * 2, sys.modules['__main__'].__name__)\n"
        "if __name__ == '__main__':\n"
        "    with mp.get_context('spawn').Pool(1) as pool:\n"
        "        print(pool.map(work, [1, 2]))\n"
    )
    plain = python(str(script), cwd=tmp_path)
    recorded = detrun("record", "-q", str(script), cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    assert recorded.stdout == plain.stdout == "[(2, '__mp_main__'), (4, '__mp_main__')]\n"
