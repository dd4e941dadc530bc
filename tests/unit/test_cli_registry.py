"""The command table: every command imports, and `detrun record` starts without the others' imports."""
from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

from detrun.cli import COMMANDS, main


def test_every_registered_command_imports_and_is_listed() -> None:
    context = click.Context(main)
    assert main.list_commands(context) == list(COMMANDS)
    for name in COMMANDS:
        command = main.get_command(context, name)
        assert isinstance(command, click.Command), name
    help_text = CliRunner().invoke(main, ["--help"]).output
    assert all(f"  {name} " in help_text for name in COMMANDS), help_text


def test_the_command_line_imports_only_what_the_invoked_command_needs() -> None:
    probe = ("import sys\nfrom detrun.cli import main\n"
             "heavy = [m for m in ('detrun.engine.session', 'detrun.env.diff', 'detrun.launch', 'detrun.profiler',"
             " 'torch', 'numpy') if m in sys.modules]\nprint(heavy)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
