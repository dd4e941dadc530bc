"""`detrun merge`: join the per-node traces of a multi-node recording into one."""
from __future__ import annotations

import sys

import click


@click.command()
@click.option("-o", "--output", default="trace.zst", show_default=True, metavar="FILE", help="The merged trace.")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output file.")
@click.argument("traces", nargs=-1, required=True, type=click.Path(dir_okay=False))
def merge_command(output: str, force: bool, traces: tuple[str, ...]) -> None:
    """Join the traces each node of a multi-node run wrote into one trace.

    \b
    A recording on several nodes writes one file per node (trace.node0.zst,
    trace.node1.zst, ...). Merge them once the run has ended, then replay from
    the merged file on every node (or from each node's own file):
      detrun merge -o trace.zst trace.node0.zst trace.node1.zst
      detrun replay trace.zst -- torchrun --nnodes=2 --node_rank=$NODE ... train.py
    The files must be one run: the same command and hash seed, each node once,
    every rank of the world size present.
    """
    from detrun.trace.merge import merge_traces

    merged = merge_traces(list(traces), output, force=force)  # a refusal: one line, exit 2 (DetrunGroup)
    print(f"detrun: merged {len(merged['nodes'])} nodes, {merged['ranks']} ranks → {output}", file=sys.stderr)
