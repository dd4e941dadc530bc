"""`detrun check`: record, replay N-1 times, and judge the runs by the criteria of a reproducible run."""
from __future__ import annotations

import click

from detrun.cli.common import (
    DIGEST_EVERY_HELP,
    PLACEMENT_HELP,
    SCRIPT_CONTEXT,
    DigestEveryType,
    ScriptCommand,
    fail,
    finish_report,
    make_target,
)


@click.command(cls=ScriptCommand, context_settings=SCRIPT_CONTEXT, epilog=PLACEMENT_HELP)
@click.option("-n", "--runs", default=2, show_default=True, type=click.IntRange(min=2), metavar="N",
              help="Runs in all: one recording, then N-1 replays of it.")
@click.option("--plain", default=0, show_default=True, type=click.IntRange(min=0), metavar="K",
              help="Also run `python SCRIPT ARGS` K times without detrun (K >= 2) and say whether those runs "
                   "differ: if they do not, a pass says little.")
@click.option("--json", "report_json", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the criteria, the verdict and the plain runs as JSON (for CI).")
@click.option("--keep", type=click.Path(file_okay=False), metavar="DIR",
              help="Keep the trace, each run's stdout and each replay's JSON report in DIR (new or empty; "
                   "outside the directories the script lists, since it fills up between the runs).")
@click.option("-m", "--module", is_flag=True, help="SCRIPT is a module name (like `python -m`).")
@click.option("--policy", type=click.Choice(["strict", "minimal", "off"]), default="strict", show_default=True,
              help="The determinism policy to record with (as in `detrun record --policy`).")
@click.option("--from-profile", type=click.Path(dir_okay=False), metavar="PROFILE.json",
              help="With --policy minimal: the `detrun profile --json` output whose flagged ops to patch.")
@click.option("--digest-every", default="auto", show_default=True, type=DigestEveryType(), metavar="N|auto",
              help=DIGEST_EVERY_HELP)
@click.option("--ignore-output", multiple=True, metavar="REGEX",
              help="Mask what REGEX matches in stdout lines before comparing them (repeatable).")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines from record and replay (the table stays).")
@click.argument("script")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def check_command(runs: int, plain: int, report_json: str | None, keep: str | None, module: bool, policy: str,
                  from_profile: str | None, digest_every: int, ignore_output: tuple[str, ...], quiet: bool,
                  script: str, args: tuple[str, ...]) -> None:
    """Run SCRIPT N times under detrun and check that every run is the same.

    \b
    Run 1 records; runs 2..N replay the recording. The runs are then judged
    by the criteria of Chen et al. (ICSE'22), one table row each:
      loss at every step          the loss of every optimizer step and backward(), bit for bit
      parameters during training  all parameters, at the steps the recording digested
      final weights               every model, optimizer, weight and RNG state at exit
      stdout (masked)             line by line, durations/rates/timestamps masked
      exit status
      files written               not checked yet: detrun does not record file contents
    A row detrun could not check says "not checked", never "holds". Each
    run's stdout goes to a file (see --keep), not to the terminal.

    \b
    Exit status: 0 every checked criterion holds (REPRODUCED); 3 one fails
    (DIVERGED); 5 unverified (a replay could not check the training state,
    or a hook failed); 2 bad input.

    \b
    Examples:
      detrun check train.py --epochs 1
      detrun check -n 3 --plain 2 --json check.json train.py
    """
    import re

    from detrun.check_criteria import render, run_check

    if plain == 1:
        fail("--plain needs at least 2 runs to tell whether they differ")
    for pattern in ignore_output:
        try:
            re.compile(pattern)
        except re.error as exc:
            fail(f"--ignore-output {pattern!r} is not a regular expression: {exc}")
    result = run_check(make_target(script, args, module), runs=runs, plain=plain, keep=keep, quiet=quiet,
                       policy=policy, profile_path=from_profile, digest_every=digest_every,
                       ignore_output=ignore_output)
    finish_report(render(result), result, report_json)
