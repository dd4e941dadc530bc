"""`detrun record`: run a script under a recording session and write its trace."""
from __future__ import annotations

import re

import click

from detrun.cli.common import DIGEST_EVERY_HELP, DigestEveryType, PLACEMENT_HELP, SCRIPT_CONTEXT, ScriptCommand
from detrun.cli.direct import run_record


class SizeType(click.ParamType):
    """A byte count written the way people write it: 2GB, 500MB, 0."""

    name = "SIZE"
    _UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
              "t": 10**12, "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in self._UNITS:
            self.fail(f"{value!r} is not a size (write it like 2GB, 500MB or 0)", param, ctx)
        return int(float(match.group(1)) * self._UNITS[unit])


@click.command(cls=ScriptCommand, context_settings=SCRIPT_CONTEXT, epilog=PLACEMENT_HELP)
@click.option("-o", "--output", default="trace.zst", show_default=True, metavar="FILE",
              help="Where to write the trace.")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing trace file.")
@click.option("-m", "--module", is_flag=True, help="Run a module (like `python -m`) instead of a script.")
@click.option("--digest-every", default="auto", show_default=True, type=DigestEveryType(), metavar="N|auto",
              help=DIGEST_EVERY_HELP)
@click.option("--policy", type=click.Choice(["strict", "minimal", "off"]), default="strict", show_default=True,
              help="Determinism policy applied when torch is imported: strict = deterministic algorithms, "
                   "cudnn.benchmark off, CUBLAS_WORKSPACE_CONFIG, every detrun patch; minimal = the same flags "
                   "and only the patches for the ops a profile flagged; off = leave torch as the script sets it. "
                   "For TensorFlow, strict and minimal turn on enable_op_determinism().")
@click.option("--from-profile", type=click.Path(dir_okay=False), metavar="PROFILE.json",
              help="With --policy minimal: the `detrun profile --json` output whose flagged ops to patch.")
@click.option("--kernel-steps", default=0, show_default=True, type=click.IntRange(min=0), metavar="K",
              help="Record the CUDA kernel names launched in the first K optimizer steps, so that a "
                   "replay names the first kernel that differs. Off by default: the capture runs "
                   "torch.profiler (CUPTI), which on torch 2.11 + CUDA 13 crashed most runs at exit. "
                   "No-op without CUDA.")
@click.option("--op-digests", default=0, show_default=True, type=click.IntRange(min=0), metavar="K",
              help="Digest the output of every aten op in the first K optimizer steps, so that a replay (and "
                   "`detrun explain`) names the first op whose output differs. Off by default: it slows those "
                   "steps down (see README).")
@click.option("--op-digest-every", default=0, show_default=True, type=click.IntRange(min=0), metavar="N",
              help="Also digest every op of every Nth optimizer step (0: none beyond the first K).")
@click.option("--keep-inputs", default="1GB", show_default=True, type=SizeType(), metavar="SIZE",
              help="When the run overwrites or removes a file it read (a resumed checkpoint), keep the version "
                   "it read in TRACE.inputs/ beside the trace, up to SIZE in all, so that replays read that "
                   "version; beyond it, a replay names the file to restore and its sha256 (0: keep none).")
@click.option("-q", "--quiet", is_flag=True, help="No progress line and no summary.")
@click.argument("script")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def record_command(output: str, force: bool, module: bool, digest_every: int, policy: str, from_profile: str | None,
           kernel_steps: int, op_digests: int, op_digest_every: int, keep_inputs: int, quiet: bool, script: str,
           args: tuple[str, ...]) -> None:
    """Run SCRIPT [ARGS]... as `python` would (or a launcher COMMAND) and record every source of nondeterminism.

    \b
    Arguments after SCRIPT go to the script unchanged. The script's stdout,
    stderr and exit status are its own; detrun speaks on stderr, prefixed
    `detrun:`. It records the Python, NumPy and PyTorch RNG seeds (including
    ones taken from the clock), OS entropy (os.urandom, secrets, uuid4), the
    hash seed, thread counts, the loss at every optimizer step and a digest
    of the parameters at a cadence within 0.25% of the step time (--digest-every).
    It fingerprints the files the script reads and digests the files it writes
    under the current directory, so that a replay names a changed data file
    and compares checkpoints tensor by tensor.

    \b
    \b
    Distributed runs: give the launcher command instead of a script. Every
    rank (and every process Lightning's DDP starts) records under its own
    role, rank0, rank1, ..., into one trace; on several nodes each node
    writes trace.nodeK.zst, which `detrun merge` joins.

    \b
    Examples:
      detrun record train.py --epochs 3
      detrun record -o runs/a.zst -m mypkg.train --lr 0.1
      detrun record --op-digests 5 train.py     # for `detrun explain`
      detrun record -- torchrun --nproc_per_node=2 train.py
      detrun record -- accelerate launch --num_processes 2 train.py
    """
    # The same run as a plain command line's without click (cli/direct.py).
    run_record(output=output, force=force, module=module, digest_every=digest_every, policy=policy,
               from_profile=from_profile, kernel_steps=kernel_steps, op_digests=op_digests,
               op_digest_every=op_digest_every, keep_inputs=keep_inputs, quiet=quiet, script=script, args=args)
