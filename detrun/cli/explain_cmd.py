"""`detrun explain`: replay a trace and, if it diverges, name the first op whose output differs."""
from __future__ import annotations

import click

from detrun.cli.common import PLACEMENT_HELP, SCRIPT_CONTEXT, ScriptCommand, fail, finish_report, make_target


@click.command(cls=ScriptCommand, leading=1, context_settings=SCRIPT_CONTEXT,
               epilog=PLACEMENT_HELP + "\nOptions may also stand between TRACE and SCRIPT.")
@click.option("-m", "--module", is_flag=True, help="SCRIPT is a module name (like `python -m`).")
@click.option("--json", "report_json", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the explanation (op, line, knowledge base facts, patch, environment) as JSON.")
@click.option("--allow-changed-script", is_flag=True, help="Replay even if the script's sha256 changed.")
@click.option("--allow-changed-args", is_flag=True, help="Replay with arguments other than the recorded ones.")
@click.argument("trace", type=click.Path(dir_okay=False))
@click.argument("script", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def explain_command(module: bool, report_json: str | None, allow_changed_script: bool, allow_changed_args: bool,
                    trace: str, script: str | None, args: tuple[str, ...]) -> None:
    """Replay TRACE and, if it diverges, name the first op whose output differs.

    \b
    Replay 1 gives the verdict and the divergent step S (a replay that
    reproduces has nothing to explain). Replays 2 and 3 digest the output of
    every aten op of steps 1..S, with the user's line of each (backward ops
    are named by the forward line that created them). Then:
      - a trace recorded with `record --op-digests K` is compared op by op:
        the first op whose output differs from the recording is named;
      - an op whose output differs between replays 2 and 3 is
        nondeterministic on this machine;
      - replays that agree with each other but not with the recording mean
        this machine is deterministic there: the environment differences
        from the recording that can change bits are named.
    The op comes with what the knowledge base says of it and detrun's patch
    for it, if any. The script's stdout goes to scratch files, not the terminal.

    \b
    Exit status: 3 the replay diverged (the op, or why none was found, is
    printed); 0 it reproduced: nothing to explain; 5 it was unverified;
    2 bad input.

    \b
    Examples:
      detrun record --op-digests 5 train.py && detrun explain trace.zst train.py
      detrun explain --json why.json trace.zst train.py
    """
    from detrun.explain import explain, render

    try:
        result = explain(trace, make_target(script, args, module), allow_changed_script=allow_changed_script,
                         allow_changed_args=allow_changed_args)
    except RuntimeError as exc:
        fail(str(exc), 70)
    finish_report(render(result), result, report_json)
