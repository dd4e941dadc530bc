"""`detrun replay`: re-run a recorded script, feed back every recorded value, and give the verdict."""
from __future__ import annotations

import click

from detrun.cli.common import SCRIPT_CONTEXT, make_target


@click.command(context_settings=SCRIPT_CONTEXT)
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
def replay_command(module: bool, strict: bool, allow_changed_script: bool, allow_changed_args: bool, no_pin_threads: bool,
           quiet: bool, trace: str, script: str | None, args: tuple[str, ...]) -> None:
    """Re-run a recorded script, feeding back every recorded value, and check it step by step.

    \b
    ARGS default to the recorded arguments; giving different ones is refused
    unless --allow-changed-args. SCRIPT defaults to the recorded script only
    if it is a file under the current directory with the recorded sha256; a
    module runs only when you name it (-m). The command run is printed first.
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

    exit_like(replay_run(trace, make_target(script, args, module), allow_changed_script=allow_changed_script,
                         allow_changed_args=allow_changed_args, strict=strict, quiet=quiet,
                         pin_threads=not no_pin_threads))
