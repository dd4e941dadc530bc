"""`detrun env`: print the environment fingerprint, or compare it with a trace's (the probes are in detrun.env)."""
from __future__ import annotations

import json
from typing import Any

import click

from detrun.env.diff import flatten
from detrun.env.fingerprint import CUDA_DISTRIBUTIONS, UNAVAILABLE, cuda_unused_note, fingerprint, probe


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
    from detrun.env import diff as env_diff

    if trace is not None:
        differences = env_diff.compare_with_trace(trace)
        if as_json:
            click.echo(json.dumps([d._asdict() for d in differences], indent=2, default=str))
        else:
            click.echo("\n".join(env_diff.report_lines(differences, limit=1000)) or "no differences")
        return
    data = describe(with_torch=with_torch)
    click.echo(json.dumps(data, indent=2, default=str) if as_json else render(data))



def render(data: dict[str, Any]) -> str:
    """Return a fingerprint (plus optional torch facts) as aligned `key  value` lines."""
    flat = flatten(data)
    cuda = data.get("cuda")
    unused = cuda_unused_note(cuda) if isinstance(cuda, dict) else None
    if unused is not None:
        for name in CUDA_DISTRIBUTIONS:  # libraries found on disk that no framework here loads
            value = flat.get(f"cuda.{name}")
            if isinstance(value, str) and not value.startswith(UNAVAILABLE):
                flat[f"cuda.{name}"] = f"not used: {unused} (version {value} installed)"
    width = max((len(k) for k in flat), default=0)
    lines = []
    section = None
    for key, value in flat.items():
        head = key.partition(".")[0]
        if head != section and section is not None:
            lines.append("")
        section = head
        lines.append(f"{key:<{width}}  {_plain(value)}")
    return "\n".join(lines)


def _plain(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "(none)"
    return str(value)




def describe(*, with_torch: bool = True, script_dir: str | None = None) -> dict[str, Any]:
    """Return the fingerprint plus, if asked and installed, what torch itself reports (it imports torch)."""
    data = fingerprint(script_dir)
    if with_torch:
        data["torch"] = _torch_section()
    return data


def _torch_section() -> Any:
    try:
        import torch
    except ImportError:
        return f"{UNAVAILABLE} (torch not installed)"
    except Exception as exc:  # noqa: BLE001 - a broken install still leaves the rest of the report
        return f"{UNAVAILABLE} ({type(exc).__name__}: {exc})"
    from detrun.env.torch_facts import torch_fingerprint, torch_state

    info = torch_fingerprint(torch)
    info["flags"] = probe(lambda: torch_state(torch))
    return info
