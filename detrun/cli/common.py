"""What every command shares: one-line errors with their exit code, and the script/argument convention."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from detrun.errors import DetrunError, ExitCode

if TYPE_CHECKING:
    from detrun.runner import Target

# Options after the script name belong to the script, never to detrun.
SCRIPT_CONTEXT = {"ignore_unknown_options": True, "allow_interspersed_args": False}


def fail(message: str, code: int = ExitCode.BAD_INPUT) -> None:
    """Print one `detrun:` line on stderr and exit with the given code."""
    click.echo(f"detrun: error: {message}", err=True)
    sys.exit(int(code))


class DetrunGroup(click.Group):
    """A click group that turns DetrunError into one line and its exit code."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except DetrunError as exc:
            fail(str(exc), exc.exit_code)


def make_target(script: str | None, args: tuple[str, ...], module: bool) -> Target | None:
    from detrun.runner import Target

    if script is None:
        return None
    return Target(script, tuple(args), module)
