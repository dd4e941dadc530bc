"""What every command shares: one-line errors with their exit code, and the script/argument convention."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from detrun.errors import DetrunError, ExitCode, internal_error

if TYPE_CHECKING:
    from detrun.runner import Target

# Options after the script name belong to the script, never to detrun.
SCRIPT_CONTEXT = {"ignore_unknown_options": True, "allow_interspersed_args": False}


def fail(message: str, code: int = ExitCode.BAD_INPUT) -> None:
    """Print one `detrun:` line on stderr and exit with the given code."""
    click.echo(f"detrun: error: {message}", err=True)
    sys.exit(int(code))


class DetrunGroup(click.Group):
    """A click group that turns DetrunError into one line and its exit code, and any other escaping
    exception into one `internal error` line, a report file and exit 70."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except DetrunError as exc:
            fail(str(exc), exc.exit_code)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors, --help, Ctrl-C: click reports these itself
        except Exception as exc:  # noqa: BLE001 - the one place a bug in detrun becomes exit 70
            sys.exit(internal_error(exc))
        return None


def make_target(script: str | None, args: tuple[str, ...], module: bool) -> Target | None:
    from detrun.runner import Target

    if script is None:
        return None
    return Target(script, tuple(args), module)
