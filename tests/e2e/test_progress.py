"""Progress goes to stderr only when it is a terminal, and -q silences it; it never shares a line with the script's."""
from __future__ import annotations

import os
import re
import shlex
import textwrap
from pathlib import Path
from typing import Callable

from conftest import EXAMPLES, detrun, detrun_command
from support.terminal_screen import Screen, run_on_terminal, stderr_through_a_terminal

from detrun.progress_line import FRESH_LINE as FRESH_LINE_BYTES

EXAMPLE = str(EXAMPLES / "train_unseeded.py")


def _stderr_through_a_terminal(args: list[str], cwd: Path) -> str:
    """Run detrun with stderr on a pseudo-terminal and return what it wrote there."""
    return stderr_through_a_terminal([*detrun_command(), *args], cwd)


def test_progress_line_on_a_terminal(tmp_path: Path) -> None:
    shown = _stderr_through_a_terminal(["record", EXAMPLE, "--steps", "300"], tmp_path)
    assert "\rdetrun: recording · step " in shown, shown[-500:]
    assert "recorded 300 steps" in shown
    quiet = _stderr_through_a_terminal(["record", "-q", "--force", EXAMPLE, "--steps", "300"], tmp_path)
    assert "detrun:" not in quiet, quiet[-500:]


# Two tqdm bars on stderr (the second cleared with leave=False), a quiet stretch long enough for
# detrun's line to show (QUIET_SECONDS is 1 s), and a last line without its newline.
TQDM_SCRIPT = textwrap.dedent("""
    import time
    import torch
    from tqdm import tqdm

    print("starting", flush=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 4)

    def step():
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in tqdm(range(30), desc="train"):
        step()
        time.sleep(0.02)
    for _ in range(50):  # quiet: detrun's line may show here
        step()
        time.sleep(0.06)
    for _ in tqdm(range(20), desc="eval", leave=False):
        step()
        time.sleep(0.02)
    print("final", end="", flush=True)
""")

# An epoch line on stdout now and then, with quiet steps between.
EPOCHS_SCRIPT = textwrap.dedent("""
    import time
    import torch

    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 4)
    for step in range(120):
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        time.sleep(0.03)
        if step % 40 == 39:
            print(f"epoch {step // 40} done", flush=True)
""")

# Steps for a minute, quietly, until Ctrl-C.
LONG_SCRIPT = textwrap.dedent("""
    import time
    import torch

    print("starting", flush=True)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 4)
    for _ in range(3000):
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        time.sleep(0.02)
""")


def _terminal_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONHASHSEED", "COLUMNS", "LINES")}


def _assert_never_shares_a_line(screen: Screen, ours: str) -> None:
    """Detrun's progress text is never on a line that shows anything else, at any moment."""
    for state in screen.seen:
        if ours in state:
            assert state.startswith(ours) and not re.search(r"\||final|epoch", state), (state, screen.text())


def test_progress_line_never_shares_a_line_with_tqdm(tmp_path: Path) -> None:
    (tmp_path / "train_tqdm.py").write_text(TQDM_SCRIPT)
    screen, status = run_on_terminal([*detrun_command(), "record", "train_tqdm.py"], cwd=str(tmp_path),
                                     env=_terminal_env())
    lines = [line for line in screen.text() if line]
    assert status == 0, lines
    assert any("detrun: recording · step " in state for state in screen.seen), "the progress line never showed"
    _assert_never_shares_a_line(screen, "detrun: recording")
    assert FRESH_LINE_BYTES not in screen.raw
    # The final screen: each line intact, the unfinished `final` ended before detrun's summary.
    assert len(lines) == 4 and lines[0] == "starting" and lines[2] == "final", lines
    assert re.fullmatch(r"train: 100%\|█+\| 30/30 \[.*\]", lines[1]), lines
    assert lines[3].startswith("detrun: recorded 100 steps"), lines

    screen, status = run_on_terminal([*detrun_command(), "replay", "trace.zst"], cwd=str(tmp_path),
                                     env=_terminal_env())
    lines = [line for line in screen.text() if line]
    assert status == 0, lines
    _assert_never_shares_a_line(screen, "detrun: replaying ·")
    assert lines[-2] == "final" and lines[-1].startswith("detrun: REPRODUCED "), lines


def test_progress_line_with_stdout_piped_through_tee(tmp_path: Path) -> None:
    # `| tee log` brings stdout back to the terminal through a process detrun does not see.
    (tmp_path / "train_epochs.py").write_text(EPOCHS_SCRIPT)
    command = f"{' '.join(map(shlex.quote, detrun_command()))} record train_epochs.py | tee log.txt"
    screen, status = run_on_terminal(["bash", "-c", command], cwd=str(tmp_path), env=_terminal_env())
    lines = [line for line in screen.text() if line]
    assert status == 0, lines
    assert any("detrun: recording · step " in state for state in screen.seen), "the progress line never showed"
    _assert_never_shares_a_line(screen, "detrun: recording")
    assert lines[:3] == ["epoch 0 done", "epoch 1 done", "epoch 2 done"], lines
    assert (tmp_path / "log.txt").read_text() == "epoch 0 done\nepoch 1 done\nepoch 2 done\n"


def test_no_progress_line_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    (tmp_path / "train_epochs.py").write_text(EPOCHS_SCRIPT)
    result = detrun("record", "train_epochs.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("detrun: recorded 120 steps") and "\r" not in result.stderr, result.stderr
    assert result.stdout == "epoch 0 done\nepoch 1 done\nepoch 2 done\n"


def test_ctrl_c_starts_the_traceback_on_a_clean_line(tmp_path: Path) -> None:
    (tmp_path / "train_long.py").write_text(LONG_SCRIPT)
    typed: list[bytes] = []

    def press_ctrl_c_once_the_line_shows(screen: Screen, type_keys: Callable[[bytes], None]) -> None:
        if not typed and any("detrun: recording · step " in state for state in screen.seen):
            type_keys(b"\x03")  # the terminal turns it into SIGINT for the foreground process group
            typed.append(b"\x03")

    screen, status = run_on_terminal([*detrun_command(), "record", "train_long.py"], cwd=str(tmp_path),
                                     env=_terminal_env(), on_output=press_ctrl_c_once_the_line_shows)
    lines = screen.text()
    assert typed, lines
    assert status != 0, lines
    traceback = [line for line in lines if "Traceback (most recent call last):" in line]
    # The echoed ^C may land before or after detrun erases its line; either way the traceback starts the line.
    assert len(traceback) == 1 and re.fullmatch(r"(\^C)?Traceback \(most recent call last\):", traceback[0]), lines
    assert "KeyboardInterrupt" in lines
    assert not any("detrun: recording ·" in line for line in lines), lines
    assert any(line.startswith("detrun: recorded ") for line in lines), lines
