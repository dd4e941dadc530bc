"""`detrun profile`: a thin click wrapper around detrun.profiler.profile_run.run_profile.

Importing this module must stay cheap (the CLI imports it at start-up), so torch is imported
only when the command runs.
"""
from __future__ import annotations

import click

from detrun.cli.common import PLACEMENT_HELP, ScriptCommand
from detrun.runner import Target

HELP = """List every op SCRIPT runs that can make two runs differ bit for bit.

\b
Runs SCRIPT with its ARGS exactly as `python SCRIPT ARGS` would, watches every
aten op it executes (forward and backward) and stops cleanly after --steps
optimizer steps. For each op that can change bits it reports the line of your
code that triggered it (for backward ops: the forward line that created them),
what happens on CUDA by default and under torch.use_deterministic_algorithms(True),
whether re-running it on copies of its inputs gave different bits here, and
the detrun patch that fixes it.

\b
One run gives the complete list: deterministic mode would stop at the first op
that has no deterministic implementation, and says nothing about ops that
are nondeterministic without raising.

\b
Without a GPU the CUDA column is a prediction from detrun's knowledge base
(detrun/profiler/kb/torch.json: torch docs and H100 measurements). With a GPU
the flagged ops' CUDA kernel names are listed too.

\b
Examples:
  detrun profile train.py --epochs 1
  detrun profile --steps 20 --json profile.json train.py
  detrun profile --fail-on nondeterministic -q train.py   # in CI
  detrun profile -m mypkg.train --lr 0.1

\b
Exit codes: 0 done; 4 --fail-on nondeterministic found an unpatched op;
2 bad input (missing script); if the script itself fails or exits with a
status before the step limit, that status is passed through.
"""


@click.command(
    "profile",
    cls=ScriptCommand,
    help=HELP,
    epilog=PLACEMENT_HELP,
    short_help="List the nondeterministic ops a script runs, with call sites and patches.",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False,
                      "help_option_names": ["-h", "--help"]},
)
@click.option("--steps", type=click.IntRange(min=0), default=5, show_default=True, metavar="K",
              help="Stop cleanly after K optimizer steps (counted over all optimizers); "
                   "0 runs the script to its end.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also write the findings as JSON (schema: detrun/profiler/SCHEMA.md; the same for "
                   "TensorFlow scripts).")
@click.option("--fail-on", type=click.Choice(["nondeterministic"]), default=None,
              help="Exit with code 4 if an op that is nondeterministic on CUDA (or measured "
                   "nondeterministic here) has no detrun patch: the rows whose fix is 'none'.")
@click.option("--no-empirical", is_flag=True,
              help="Skip re-running each op signature twice to compare bits (faster; "
                   "finds only what the knowledge base knows).")
@click.option("--device", type=click.Choice(["cuda", "auto"]), default="cuda", show_default=True,
              help="cuda: judge every op by its CUDA behaviour (a prediction when running on CPU); "
                   "auto: judge each op on the device it actually ran on.")
@click.option("--all", "show_all", is_flag=True, help="List every op in the table, not only known ones.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the one-line summary (and errors).")
@click.option("-m", "--module", "is_module", is_flag=True,
              help="SCRIPT is a module name, run like `python -m SCRIPT`.")
@click.option("--framework", type=click.Choice(["auto", "torch", "tensorflow"]), default="auto", show_default=True,
              help="Which framework's ops to list; auto picks tensorflow for a script that imports "
                   "TensorFlow/Keras and not torch.")
@click.argument("script", metavar="SCRIPT")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def profile_command(steps: int, json_path: str | None, fail_on: str | None, no_empirical: bool,
                    device: str, show_all: bool, quiet: bool, is_module: bool, framework: str, script: str,
                    args: tuple[str, ...]) -> None:
    """Profile SCRIPT and exit with detrun's code or the script's own status."""
    from detrun.profiler.profile_run import ProfileOptions, run_profile
    from detrun.profiler.tf_profile import run_tensorflow_profile, uses_tensorflow
    from detrun.runner import resolve

    target = Target(script, tuple(args), is_module)
    options = ProfileOptions(target=target, steps=steps, json_path=json_path,
                             fail_on=fail_on, empirical=not no_empirical, device=device, quiet=quiet,
                             show_all=show_all)
    if framework == "tensorflow" or (framework == "auto" and uses_tensorflow(resolve(target).path)):
        raise SystemExit(run_tensorflow_profile(options))
    result = run_profile(options)
    code = result.exit_code
    if code is None:
        result.outcome.finish()  # leave exactly as python would have: the script's own status
    raise SystemExit(code)
