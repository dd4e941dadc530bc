"""What every command shares: one-line errors with their exit code, and the script/argument convention."""
from __future__ import annotations

import importlib
import json
import sys
from typing import Any, Iterable, NoReturn, Protocol

import click

from detrun.cli.direct import launcher_command, make_target, script_source
from detrun.errors import DetrunError, ExitCode, internal_error

# Options after the script name belong to the script, never to detrun (ScriptCommand refuses the
# detrun options the script does not take; see cli/option_placement.py).
SCRIPT_CONTEXT = {"ignore_unknown_options": True, "allow_interspersed_args": False}

PLACEMENT_HELP = """\b
detrun's options go before SCRIPT; everything after SCRIPT is passed to it.
One of this command's options written after SCRIPT is refused, with the
corrected command, unless the script's source mentions it (then the script
takes it). Put -- before SCRIPT to pass everything after it unchecked."""


class DigestEveryType(click.ParamType):
    """`--digest-every`: `auto` (0: a cadence within a time budget) or a whole number N >= 1."""

    name = "N|auto"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and value >= 0:
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return 0
        if text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail(f"{value!r} is neither 'auto' nor a whole number of steps >= 1", param, ctx)


DIGEST_EVERY_HELP = ("The loss is checked at every optimizer step; all parameters are digested at each "
                     "optimizer's first step and every N steps after. 'auto' (the default) digests the first 5 "
                     "steps, then picks N (at most 64) so that the digests take at most 0.25% of the step time, "
                     "and digests the parameters after the last step: a divergence is named at the first step "
                     "whose loss or digest differs, one that the loss does not show at most N steps late. "
                     "1 digests every step, which names the exact step and parameter of a divergence. A replay "
                     "digests the steps its recording did.")


class _JsonReport(Protocol):
    exit_code: int

    def as_json(self) -> dict[str, object]: ...


def finish_report(lines: Iterable[str], result: _JsonReport, report_json: str | None) -> NoReturn:
    """Print a command's report lines on stderr, write its `--json FILE`, and exit with its code."""
    for line in lines:
        click.echo(f"detrun: {line}", err=True)
    if report_json:
        try:
            with open(report_json, "w", encoding="utf-8") as out:
                json.dump(result.as_json(), out, indent=2)
        except OSError as exc:
            fail(f"cannot write {report_json}: {exc}")
    sys.exit(int(result.exit_code))


def fail(message: str, code: int = ExitCode.BAD_INPUT) -> None:
    """Print one `detrun:` line on stderr and exit with the given code."""
    click.echo(f"detrun: error: {message}", err=True)
    sys.exit(int(code))


class DetrunGroup(click.Group):
    """A click group that turns DetrunError into one line and its exit code, and any other escaping
    exception into one `internal error` line, a report file and exit 70.

    `lazy_commands` maps a command's name to "module:attribute"; the module is imported only when
    the command is invoked or listed (click's documented lazy-loading pattern).
    """

    def __init__(self, *args: Any, lazy_commands: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *self.lazy_commands]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        place = self.lazy_commands.get(cmd_name)
        if place is None:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = place.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command), place
        return command

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


class ScriptCommand(click.Command):
    """A command taking `[LEADING] SCRIPT [ARGS]...`: it refuses, before anything runs, a detrun option
    written after SCRIPT that the script does not take, and parses options between LEADING and SCRIPT."""

    def __init__(self, *args: object, leading: int = 0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.leading = leading  # positionals before SCRIPT: replay's TRACE

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        from detrun.cli import option_placement as placement

        specs = [placement.OptionSpec(tuple(p.opts + p.secondary_opts), not (p.is_flag or p.count))
                 for p in self.get_params(ctx) if isinstance(p, click.Option)]
        line = placement.split_command_line(list(args), specs, self.leading)
        if line.unknown is not None:
            raise click.NoSuchOption(line.unknown, ctx=ctx)
        rest = super().parse_args(ctx, line.reordered())
        if line.script is not None and not ctx.resilient_parsing:
            module = any(p.name is not None and ctx.params.get(p.name) for p in self.get_params(ctx)
                         if isinstance(p, click.Option) and "-m" in p.opts)
            misplaced = placement.misplaced_options(line, specs, script_source(line.script, module))
            if misplaced is not None:
                fail(placement.misplaced_message(ctx.info_name or self.name or "", misplaced, line.script))
        return rest


__all__ = ["DIGEST_EVERY_HELP", "DetrunGroup", "DigestEveryType", "PLACEMENT_HELP", "SCRIPT_CONTEXT", "ScriptCommand",
           "fail", "finish_report", "launcher_command", "make_target"]
