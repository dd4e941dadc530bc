"""What got in a new user's way in the first hour, through the real CLI: option placement, a syntax
error, `__file__`, a renamed script, and what show, env and the progress line say."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SCRIPTS, detrun, detrun_command, python, verdict
from support.terminal_screen import stderr_through_a_terminal

BAD_INPUT = 2

# A script that ignores its arguments: a detrun option after it can only be a misplaced one.
IGNORES_ARGS = "import random, sys\nprint(random.random())\n"
# A script whose own parser has -o and --strict (argparse, as most training scripts).
OWN_PARSER = """import argparse, random
parser = argparse.ArgumentParser()
parser.add_argument("-o", default="none")
parser.add_argument('--strict', action="store_true")
parser.add_argument("--epochs", type=int, default=1)
args = parser.parse_args()
print("script got", args.o, args.strict, args.epochs, random.random())
"""
TRAINS = """import random
import torch
torch.manual_seed(random.randrange(1 << 30))
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(8, 4)
for _ in range(3):
    opt.zero_grad()
    loss = model(x).pow(2).mean()
    loss.backward()
    opt.step()
print("weights", model.weight.detach().sum().item())
"""


def _refused(result: subprocess.CompletedProcess[str], option: str, corrected: str) -> None:
    assert result.returncode == BAD_INPUT, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"detrun: error: {option} is a detrun option but comes after the script; "
                               f"did you mean: {corrected} "), lines[0]
    assert result.stdout == ""  # nothing ran


# ----------------------------------------------------------------- 1. option placement


def test_record_option_after_the_script_is_refused_before_the_run(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(IGNORES_ARGS)
    result = detrun("record", "train.py", "-o", "x.zst", cwd=tmp_path)
    _refused(result, "-o", "detrun record -o x.zst train.py")
    assert "detrun record -- train.py -o x.zst" in result.stderr  # the way to give it to the script
    assert not list(tmp_path.glob("*.zst"))  # no ./trace.zst left to refuse the next record
    # The corrected command works, and -f/--policy/-q after the script are caught as well.
    assert detrun("record", "-o", "x.zst", "train.py", cwd=tmp_path).returncode == 0
    several = detrun("record", "train.py", "--epochs", "3", "-f", "--policy=off", "-q", cwd=tmp_path)
    assert several.returncode == BAD_INPUT
    assert "-f, --policy and -q are detrun options" in several.stderr
    assert "detrun record -f --policy=off -q train.py --epochs 3 " in several.stderr


def test_replay_options_between_trace_and_script_and_after_the_script(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(IGNORES_ARGS)
    assert detrun("record", "-q", "train.py", cwd=tmp_path).returncode == 0
    # Between TRACE and SCRIPT (or with no SCRIPT) an option is unambiguously detrun's.
    between = detrun("replay", "trace.zst", "--strict", "-q", cwd=tmp_path)
    assert between.returncode == 5 and "UNVERIFIED" in between.stderr, between.stderr  # no model: nothing to check
    assert "no such script" not in between.stderr
    _refused(detrun("replay", "trace.zst", "train.py", "--strict", cwd=tmp_path), "--strict",
             "detrun replay --strict trace.zst train.py")
    unknown = detrun("replay", "trace.zst", "--stirct", cwd=tmp_path)
    assert unknown.returncode == BAD_INPUT and "No such option" in unknown.stderr


def test_profile_and_check_options_after_the_script_are_refused(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(IGNORES_ARGS)
    _refused(detrun("profile", "train.py", "--steps", "2", cwd=tmp_path), "--steps",
             "detrun profile --steps 2 train.py")
    _refused(detrun("check", "train.py", "-n", "3", cwd=tmp_path), "-n", "detrun check -n 3 train.py")


def test_an_option_the_script_defines_goes_to_the_script(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(OWN_PARSER)
    plain = python("train.py", "-o", "out", "--strict", "--epochs", "2", cwd=tmp_path)
    assert "script got out True 2" in plain.stdout
    recorded = detrun("record", "-q", "train.py", "-o", "out", "--strict", "--epochs", "2", cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    assert "script got out True 2" in recorded.stdout
    assert (tmp_path / "trace.zst").exists() and not (tmp_path / "out").exists()
    # -f is detrun's and the script does not define it: refused, even among the script's own options.
    _refused(detrun("record", "train.py", "-o", "out", "-f", cwd=tmp_path), "-f",
             "detrun record -f train.py -o out")
    # -h after the script is the script's help, as with python (argparse defines it without naming it).
    helped = detrun("record", "-q", "-f", "train.py", "-h", cwd=tmp_path)
    assert helped.returncode == 0 and "usage: train.py" in helped.stdout, helped.stderr


def test_double_dash(tmp_path: Path) -> None:
    (tmp_path / "argv.py").write_text("import sys\nprint(sys.argv[1:])\n")
    # `--` before SCRIPT ends detrun's options: what follows the script is passed on unchecked.
    before = detrun("record", "-q", "--", "argv.py", "-o", "x", cwd=tmp_path)
    assert before.returncode == 0, before.stderr
    assert before.stdout.strip() == "['-o', 'x']"
    # `--` after SCRIPT is the script's, as python passes it, and ends the check.
    after = detrun("record", "-q", "-f", "argv.py", "--", "-o", "x", cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip() == python("argv.py", "--", "-o", "x", cwd=tmp_path).stdout.strip()
    replayed = detrun("replay", "-q", "--", "trace.zst", "argv.py", "--", "-o", "x", cwd=tmp_path)
    assert replayed.stdout.strip() == "['--', '-o', 'x']", replayed.stderr


def test_help_states_the_placement_rule() -> None:
    for command in ("record", "replay", "profile", "check"):
        shown = " ".join(detrun(command, "--help").stdout.split())
        assert "Put -- before SCRIPT to pass everything after it unchecked" in shown, command


# ----------------------------------------------------------------- 2. syntax error, 3. __file__


def test_syntax_error_looks_like_pythons(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("x = 1\ndef f(:\n    pass\n")
    plain = python("bad.py", cwd=tmp_path)
    assert plain.returncode == 1 and "SyntaxError" in plain.stderr
    for args in (["record", "bad.py"], ["record", "-f", "-m", "bad"]):
        result = detrun(*args, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        shown = "".join(line for line in result.stderr.splitlines(keepends=True) if not line.startswith("detrun:"))
        if "-m" not in args:
            assert result.stderr == plain.stderr  # exactly python's output, no detrun frames
        assert "Traceback" not in shown and "detrun/" not in shown and "SyntaxError: invalid syntax" in shown
    assert not (tmp_path / "trace.zst").exists()  # nothing ran, nothing to refuse the next record


def test_file_and_argv0_match_python_for_a_path_through_dotdot(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "src" / "probe.py").write_text((SCRIPTS / "probe.py").read_text())
    work = tmp_path / "work"
    plain = json.loads(python("../src/probe.py", cwd=work).stdout)
    assert plain["file"] == os.path.join(str(work), "../src/probe.py")  # python does not normalise it
    recorded = detrun("record", "-q", "../src/probe.py", cwd=work)
    assert json.loads(recorded.stdout) == plain
    replayed = detrun("replay", "-q", "trace.zst", "../src/probe.py", cwd=work)
    seen = json.loads(replayed.stdout)
    assert (seen["file"], seen["argv"], seen["path0"]) == (plain["file"], plain["argv"], plain["path0"])


# ----------------------------------------------------------------- 4. a script is its content


def test_renamed_identical_script_reproduces_without_departures(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(TRAINS)
    (tmp_path / "b.py").write_text(TRAINS)
    first, second = python("a.py", cwd=tmp_path), python("a.py", cwd=tmp_path)
    assert first.stdout != second.stdout  # the check can fail: plain runs differ
    recorded = detrun("record", "-q", "a.py", cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    replayed = detrun("replay", "trace.zst", "b.py", cwd=tmp_path)
    assert replayed.stdout == recorded.stdout
    line = verdict(replayed.stderr)
    assert line.startswith("detrun: REPRODUCED") and "departed" not in line, line
    # A b.py that differs still replays as before, and its call sites keep their own name.
    (tmp_path / "b.py").write_text("import os\n" + TRAINS)
    changed = detrun("replay", "--allow-changed-script", "trace.zst", "b.py", cwd=tmp_path)
    assert "b.py:" in changed.stderr and "recording has it at a.py:" in changed.stderr, changed.stderr


# ----------------------------------------------------------------- 5. show, env, progress


def test_show_names_the_policy_digest_interval_and_segments(tmp_path: Path) -> None:
    (tmp_path / "loader.py").write_text(
        "import torch\nfrom torch.utils.data import DataLoader\n"
        "for batch in DataLoader(list(range(8)), batch_size=4, shuffle=True, num_workers=1):\n    print(batch)\n")
    assert detrun("record", "-q", "--digest-every", "5", "loader.py", cwd=tmp_path).returncode == 0
    shown = detrun("show", "trace.zst", cwd=tmp_path).stdout
    assert "policy strict; parameters digested every 5 steps (--digest-every 5)" in shown, shown
    assert "no op output digests (--op-digests 0)" in shown, shown
    assert "dl0.i0.w0" in shown and "dlL.iE.wW: worker W of DataLoader #L" in shown, shown


def test_env_says_cuda_libraries_are_unused_on_a_cpu_build() -> None:
    data = json.loads(detrun("env", "--json", "--no-torch").stdout)["cuda"]
    if not data["torch_build"].startswith("none") or data["runtime"].startswith("unavailable"):
        pytest.skip("needs a CPU build of torch beside CUDA runtime libraries")
    line = next(l for l in detrun("env", "--no-torch").stdout.splitlines() if l.startswith("cuda.runtime"))
    assert line.split(None, 1)[1].startswith("not used: CPU build"), line
    assert f"(version {data['runtime']} installed)" in line


def test_replay_progress_shows_the_recorded_step_count(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(TRAINS)  # the first step's progress is shown at once
    assert detrun("record", "-q", "train.py", cwd=tmp_path).returncode == 0
    shown = stderr_through_a_terminal([*detrun_command(), "replay", "trace.zst"], tmp_path, timeout=120)
    assert re.search(r"replaying · step [123]/3 ·", shown), shown[-500:]


# ----------------------------------------------------------------- 6. set-up


def test_python_dash_m_detrun_help() -> None:
    result = subprocess.run([sys.executable, "-m", "detrun", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Usage: detrun" in result.stdout, result.stderr
