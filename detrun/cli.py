"""The `detrun` command line: thin click wrappers; every decision lives in the library."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from detrun import __version__
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
      detrun profile --steps 20 train.py     # nondeterministic ops and their patches

    \b
    Exit codes: the script's own status passes through; 2 bad input (missing
    script, bad trace, refused overwrite, changed script or arguments);
    3 replay --strict stopped at a divergence; 4 profile --fail-on found an
    unpatched nondeterministic op; 70 internal error in detrun.
    """


def _target(script: str | None, args: tuple[str, ...], module: bool) -> Target | None:
    from detrun.runner import Target

    if script is None:
        return None
    return Target(script, tuple(args), module)


@main.command(context_settings=SCRIPT_CONTEXT)
@click.option("-o", "--output", default="trace.zst", show_default=True, metavar="FILE",
              help="Where to write the trace.")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing trace file.")
@click.option("-m", "--module", is_flag=True, help="Run a module (like `python -m`) instead of a script.")
@click.option("--digest-every", default=1, show_default=True, type=click.IntRange(min=1), metavar="N",
              help="Digest all parameters every N optimizer steps (the loss is checked at every step).")
@click.option("--policy", type=click.Choice(["strict", "minimal", "off"]), default="strict", show_default=True,
              help="Determinism policy applied when torch is imported: strict = deterministic algorithms, "
                   "cudnn.benchmark off, CUBLAS_WORKSPACE_CONFIG, every detrun patch; minimal = the same flags "
                   "and only the patches for the ops a profile flagged; off = leave torch as the script sets it. "
                   "For TensorFlow, strict and minimal turn on enable_op_determinism().")
@click.option("--from-profile", type=click.Path(dir_okay=False), metavar="PROFILE.json",
              help="With --policy minimal: the `detrun profile --json` output whose flagged ops to patch.")
@click.option("--kernel-steps", default=2, show_default=True, type=click.IntRange(min=0), metavar="K",
              help="Record the CUDA kernel names launched in the first K optimizer steps (0: none; no-op "
                   "without CUDA).")
@click.option("-q", "--quiet", is_flag=True, help="No progress line and no summary.")
@click.argument("script")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def record(output: str, force: bool, module: bool, digest_every: int, policy: str, from_profile: str | None,
           kernel_steps: int, quiet: bool, script: str, args: tuple[str, ...]) -> None:
    """Run SCRIPT [ARGS]... as `python` would and record every source of nondeterminism.

    \b
    Everything after SCRIPT goes to the script unchanged. The script's stdout,
    stderr and exit status are its own; detrun speaks on stderr, prefixed
    `detrun:`. It records the Python, NumPy and PyTorch RNG seeds (including
    ones taken from the clock), OS entropy (os.urandom, secrets, uuid4), the
    hash seed, thread counts, and a digest of the parameters and the loss at
    every optimizer step.

    \b
    Examples:
      detrun record train.py --epochs 3
      detrun record -o runs/a.zst -m mypkg.train --lr 0.1
    """
    from detrun.launch import exit_like, record as record_run

    exit_like(record_run(_target(script, args, module), output, force=force, quiet=quiet,
                         digest_every=digest_every, policy=policy, profile_path=from_profile,
                         kernel_steps=kernel_steps))


@main.command(context_settings=SCRIPT_CONTEXT)
@click.option("-m", "--module", is_flag=True, help="SCRIPT is a module name (like `python -m`).")
@click.option("--strict", is_flag=True, help="Stop at the first divergence with exit code 3.")
@click.option("--allow-changed-script", is_flag=True, help="Replay even if the script's sha256 changed.")
@click.option("--allow-changed-args", is_flag=True, help="Replay with arguments other than the recorded ones.")
@click.option("--no-pin-threads", is_flag=True,
              help="Use this machine's thread counts instead of the recorded ones (a divergence then names them).")
@click.option("-q", "--quiet", is_flag=True, help="No progress line and no environment report (the verdict stays).")
@click.argument("trace", type=click.Path(dir_okay=False))
@click.argument("script", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def replay(module: bool, strict: bool, allow_changed_script: bool, allow_changed_args: bool, no_pin_threads: bool,
           quiet: bool, trace: str, script: str | None, args: tuple[str, ...]) -> None:
    """Re-run a recorded script, feeding back every recorded value, and check it step by step.

    \b
    SCRIPT defaults to the recorded one and ARGS to the recorded arguments;
    giving different arguments is refused unless --allow-changed-args.
    At the end one verdict line goes to stderr:
      detrun: REPRODUCED (200 steps, 1234 events, final digest 9f3c01aa)
      detrun: DIVERGED at step 137: parameter 'fc.weight' differs ...
      detrun: UNVERIFIED (...)            nothing could be checked
    The exit status is the script's own, or 3 when --strict stopped the run.

    \b
    Examples:
      detrun replay trace.zst train.py
      detrun replay --strict trace.zst
    """
    from detrun.launch import exit_like, replay as replay_run

    exit_like(replay_run(trace, _target(script, args, module), allow_changed_script=allow_changed_script,
                         allow_changed_args=allow_changed_args, strict=strict, quiet=quiet,
                         pin_threads=not no_pin_threads))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.argument("trace", type=click.Path(dir_okay=False))
def show(as_json: bool, trace: str) -> None:
    """Show what a trace holds: header, environment, event counts and steps.

    A trace from a killed recording is shown and marked INCOMPLETE.
    """
    import json

    from detrun.show import render, summarize
    from detrun.trace import read_trace

    summary = summarize(read_trace(trace))
    click.echo(json.dumps(summary, indent=2, default=str) if as_json else render(summary))


def _register_optional_commands() -> None:
    """Attach the commands that live beside their own packages (each module stays thin)."""
    import importlib

    for module_name, attribute, command_name in (
        ("detrun.profiler.command", "profile_command", "profile"),
        ("detrun.envcmd", "env_command", "env"),
    ):
        try:
            command = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError):  # not part of this build
            continue
        main.add_command(command, command_name)


_register_optional_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
