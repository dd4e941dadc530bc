"""`detrun replay`: re-run a recorded script, feed back every recorded value, and give the verdict."""
from __future__ import annotations

import click

from detrun.cli.common import PLACEMENT_HELP, SCRIPT_CONTEXT, ScriptCommand, fail
from detrun.cli.direct import run_replay


@click.command(cls=ScriptCommand, leading=1, context_settings=SCRIPT_CONTEXT,
               epilog=PLACEMENT_HELP + "\nOptions may also stand between TRACE and SCRIPT.")
@click.option("-m", "--module", is_flag=True, help="SCRIPT is a module name (like `python -m`).")
@click.option("--strict", is_flag=True, help="Stop the run at the first divergence (exit code 3).")
@click.option("--json", "report_json", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the verdict, every check with its count, and every divergence and cause as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="List every divergence and cause, not only the first.")
@click.option("--ignore-output", multiple=True, metavar="REGEX",
              help="Mask what REGEX matches in stdout lines before comparing them (repeatable); durations, "
                   "rates, timestamps and addresses are masked already.")
@click.option("--allow-changed-script", is_flag=True, help="Replay even if the script's sha256 changed.")
@click.option("--allow-changed-args", is_flag=True, help="Replay with arguments other than the recorded ones.")
@click.option("--no-pin-threads", is_flag=True,
              help="Use this machine's thread counts instead of the recorded ones (a divergence then names them).")
@click.option("--outputs-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Move the files the replay wrote into DIR (under their paths relative to the current "
                   "directory) once they are compared. Without it they are removed: either way the recording's "
                   "checkpoints and logs are put back as they were before the replay.")
@click.option("--in-place", is_flag=True,
              help="Leave the files the replay wrote where the script wrote them, over the recording's.")
@click.option("-q", "--quiet", is_flag=True, help="No progress line and no environment report (the verdict stays).")
@click.argument("trace", type=click.Path(dir_okay=False))
@click.argument("script", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def replay_command(module: bool, strict: bool, report_json: str | None, verbose: bool, ignore_output: tuple[str, ...],
                   allow_changed_script: bool, allow_changed_args: bool, no_pin_threads: bool,
                   outputs_dir: str | None, in_place: bool, quiet: bool,
                   trace: str, script: str | None, args: tuple[str, ...]) -> None:
    """Re-run a recorded script, feeding back every recorded value, and check its state and output.

    \b
    ARGS default to the recorded arguments; giving different ones is refused
    unless --allow-changed-args. SCRIPT defaults to the recorded script only
    if it is a file under the current directory with the recorded sha256; a
    module runs only when you name it (-m). The command run is printed first.
    The verdict comes from checks of the training state (the parameters and
    loss at every optimizer step, the final state of every model, optimizer and
    RNG at exit) and of the output (stdout line by line, the exit status):
      detrun: REPRODUCED (200 steps, 1 final state, 1 exit status, 1234 events, ...)
      detrun: DIVERGED at step 137: parameter 'fc.weight' differs ...; likely cause: ...
      detrun: UNVERIFIED (why, and what to do)
    A recorded event the replay does not match (a listing with other files, a
    seed taken at another line, a changed data file) is a likely cause, never
    the verdict itself. The files the script writes under the current
    directory are compared with the recording's (checkpoints tensor by
    tensor, text line by line); then the recording's files are put back, so
    a replay never leaves its own checkpoints and logs in their place.

    \b
    Exit status: the script's own when it is not 0; otherwise 0 REPRODUCED,
    3 DIVERGED, 5 UNVERIFIED (with or without --strict).

    \b
    A trace recorded from a launcher command is replayed by giving the same
    command; each rank replays its own recording, and the verdict names the
    first rank that differs: DIVERGED at step 12 on rank 1: ...

    \b
    Examples:
      detrun replay trace.zst train.py
      detrun replay --json verdict.json -v trace.zst train.py
      detrun replay trace.zst -- torchrun --nproc_per_node=2 train.py
    """
    import re

    if outputs_dir is not None and in_place:
        fail("--outputs-dir and --in-place exclude each other: the replay's files go to DIR, or stay in place")
    for pattern in ignore_output:
        try:
            re.compile(pattern)
        except re.error as exc:
            fail(f"--ignore-output {pattern!r} is not a regular expression: {exc}")
    # The same run as a plain command line's without click (cli/direct.py).
    run_replay(module=module, strict=strict, report_json=report_json, verbose=verbose, ignore_output=ignore_output,
               allow_changed_script=allow_changed_script, allow_changed_args=allow_changed_args,
               no_pin_threads=no_pin_threads, outputs_dir=outputs_dir, in_place=in_place, quiet=quiet,
               trace=trace, script=script, args=args)
