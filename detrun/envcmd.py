"""`detrun env`: print the environment fingerprint, or compare it with a trace's (thin; the work is in env.py)."""
from __future__ import annotations

import dataclasses
import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of aligned text.")
@click.option("--torch/--no-torch", "with_torch", default=True, show_default=True,
              help="Import torch (if installed) to add what it reports: CUDA, cuDNN, NCCL, devices, backend flags.")
@click.option("--diff", "trace", metavar="TRACE", type=click.Path(dir_okay=False),
              help="Compare this machine with the environment TRACE was recorded in.")
def env_command(as_json: bool, with_torch: bool, trace: str | None) -> None:
    """Print what detrun records about the environment: everything outside the script that can change the bits.

    \b
    Python, OS, CPU model and ISA flags; torch, numpy, TensorFlow, CUDA, cuDNN,
    cuBLAS and NCCL versions; GPUs (name, UUID, driver, compute capability,
    memory, MIG and ECC mode, via NVML); numerics environment variables; the
    git commit of the current directory; a digest of the installed packages.
    A probe that cannot answer says "unavailable".

    \b
    Examples:
      detrun env                     # aligned text
      detrun env --json              # the same as JSON
      detrun env --diff trace.zst    # what differs from the recording, and whether it can change bits
    """
    from detrun import env

    if trace is not None:
        differences = env.compare_with_trace(trace)
        if as_json:
            click.echo(json.dumps([dataclasses.asdict(d) for d in differences], indent=2, default=str))
        else:
            click.echo("\n".join(env.report_lines(differences, limit=1000)) or "no differences")
        return
    data = env.describe(with_torch=with_torch)
    click.echo(json.dumps(data, indent=2, default=str) if as_json else env.render(data))
