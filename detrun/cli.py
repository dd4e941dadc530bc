"""The `detrun` command line: thin click wrappers; every decision lives in the library."""
from __future__ import annotations

import sys

import click

from detrun import __version__
from detrun.errors import DetrunError, ExitCode

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


@click.group(cls=DetrunGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="detrun")
def main() -> None:
    """Record and replay ML training runs bit for bit.

    \b
    Fixing seeds is not enough: time-seeded RNGs, OS entropy, hash-seed-dependent
    set order, thread counts, data-loader order and GPU kernel choices all change
    the bits.  detrun runs your unmodified script, records every one of those
    sources into a trace, and replays them so the run reproduces exactly, with a
    digest check at every optimizer step.

    \b
    Typical use:
      detrun record train.py --epochs 3      # run as usual, write trace.zst
      detrun replay trace.zst train.py       # re-run bit-identically; verdict on stderr
      detrun show trace.zst                  # what the trace holds
      detrun profile train.py --steps 20     # nondeterministic ops and their patches

    \b
    Exit codes: the script's own status passes through; 2 bad input (missing
    script, bad trace, refused overwrite, changed script or arguments);
    3 replay --strict stopped at a divergence; 4 profile --fail-on found an
    unpatched nondeterministic op; 70 internal error in detrun.
    """


def _register_optional_commands() -> None:
    """Attach commands whose modules are optional or heavy, without importing them eagerly."""
    try:
        from detrun.profiler.command import profile_command
    except ImportError:  # the profiler package is not part of this build
        return
    main.add_command(profile_command, "profile")


_register_optional_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
