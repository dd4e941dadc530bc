"""The `detrun diff --plot` figure: both loss curves and |Δloss| on a log scale, the first differing step marked."""
from __future__ import annotations

from detrun.compare import TraceDiff
from detrun.errors import DetrunError


class PlotUnavailable(DetrunError):
    """matplotlib, an optional extra, is not installed."""


def plot(result: TraceDiff, path: str) -> None:
    """Draw the loss curves of A and B and their absolute difference into a PNG file."""
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'detrun[plot]'") from None
    matplotlib.use("Agg")  # files only: never open a window, work without a display
    from matplotlib import pyplot

    figure, (curves, delta) = pyplot.subplots(2, 1, sharex=True, figsize=(8, 6), constrained_layout=True)
    for label, series, style in (("A", result.losses_a, "-"), ("B", result.losses_b, "--")):
        if series:
            curves.plot([s for s, _ in series], [loss for _, loss in series], style, label=label, linewidth=1)
    curves.set_ylabel("loss")
    curves.legend()
    b_by_step = dict(result.losses_b)
    # Zero differences have no place on a log scale; they are the steps where the runs agree.
    gaps = [(step, abs(loss - b_by_step[step])) for step, loss in result.losses_a
            if step in b_by_step and loss != b_by_step[step]]
    if gaps:
        delta.plot([s for s, _ in gaps], [g for _, g in gaps], ".", markersize=3, color="tab:red")
        delta.set_yscale("log")
    else:
        delta.text(0.5, 0.5, "no loss differs", ha="center", va="center", transform=delta.transAxes)
    delta.set_ylabel("|loss A - loss B|")
    delta.set_xlabel("global step" + (f" (B's step 1 = A's step {result.offset_b + 1})" if result.offset_b else ""))
    if result.first is not None:
        for axis in (curves, delta):
            axis.axvline(result.first.step, color="grey", linestyle=":", linewidth=1)
        curves.set_title(f"first differing step: {result.first.step}")
    else:
        curves.set_title("no step differs")
    figure.savefig(path, format="png", dpi=100)
    pyplot.close(figure)
