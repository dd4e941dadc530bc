"""The `detrun` click group: the commands of cli.COMMANDS, their help, one-line errors (cli/common.py)."""
from __future__ import annotations

import click

from detrun import __version__
from detrun.cli import COMMANDS
from detrun.cli.common import DetrunGroup


@click.group(cls=DetrunGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
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
      detrun check --plain 2 train.py        # record + replay, judged criterion by criterion
      detrun diff a.zst b.zst --plot loss.png   # first differing step of two recordings
      detrun explain trace.zst train.py      # the first op whose output differs, its line, its fix
      detrun record -- torchrun --nproc_per_node=2 train.py   # every rank, one trace
      detrun merge -o trace.zst trace.node0.zst trace.node1.zst   # a multi-node run's files

    \b
    Exit codes: the script's own status passes through; 2 bad input (missing
    script, bad trace, refused overwrite, changed script or arguments);
    3 replay --strict stopped at a divergence; 4 profile --fail-on found an
    unpatched nondeterministic op; 70 internal error in detrun.
    check and diff: 0 identical, 3 differs, 5 unverified / nothing compared.
    explain: 0 reproduced (nothing to explain), 3 diverged, 5 unverified.
    """
