"""`detrun diff`: compare two recordings; reads them only, runs nothing."""
from __future__ import annotations

import click


@click.command()
@click.option("--offset-b", default=0, show_default=True, type=click.IntRange(min=0), metavar="K",
              help="B's step 1 is A's step K+1: compare a run resumed from a checkpoint saved after step K "
                   "with the uninterrupted run A (traces count steps from 1 in every run).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON on stdout.")
@click.option("--plot", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Draw both loss curves and |loss A - loss B| (log scale), marking the first differing step "
                   "(needs matplotlib: pip install 'detrun[plot]').")
@click.argument("trace_a", type=click.Path(dir_okay=False))
@click.argument("trace_b", type=click.Path(dir_okay=False))
def diff_command(offset_b: int, as_json: bool, plot: str | None, trace_a: str, trace_b: str) -> None:
    """Compare two recordings A and B: settings, environment, steps, final state.

    \b
    Reports the settings and environment that differ (classed "can change bits"
    or "cosmetic", as replay does), the first optimizer step whose loss or
    parameters differ and which parameters (by name when the trace holds them,
    else by position in the optimizer), how many aligned steps differ, and
    whether the final state (models, optimizers, RNG states) is the same.
    Steps are aligned by global step; a resumed run restarts its count at 1,
    so give --offset-b K when B resumed from a checkpoint taken after A's step K.
    Nothing is run: both traces are only read (and validated).

    \b
    Exit status: 0 the training state is identical at every compared step and
    at the end; 3 it differs (a step, the step count, or the final state);
    5 there was nothing to compare; 2 bad input (unreadable trace, no matplotlib
    for --plot).

    \b
    Examples:
      detrun diff run1.zst run2.zst
      detrun diff --offset-b 500 full.zst resumed.zst --plot loss.png
    """
    import json

    from detrun.compare import compare, render

    result = compare(trace_a, trace_b, offset_b)
    if plot:
        from detrun.compare_plot import plot as draw

        draw(result, plot)
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2, default=str))
    else:
        for line in render(result):
            click.echo(f"detrun: {line}", err=True)
    raise SystemExit(result.exit_code)
