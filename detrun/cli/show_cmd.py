"""Describe what a trace holds, for `detrun show`."""
from __future__ import annotations

from typing import Any

import click

from detrun.engine.session import format_bytes
from detrun.replay_inputs import shell_words
from detrun.trace import Trace
from detrun.trace.registry import BACKENDS_SET, FILE_INPUT, FILE_KEPT, FILE_OUTPUT, STEP


def summarize(trace: Trace) -> dict[str, Any]:
    """Return a plain-data summary of a trace (what `detrun show --json` prints)."""
    end = trace.end or {}
    steps = trace.of(STEP)  # streamed from the file: only the first few are decoded
    return {
        "path": trace.path,
        "size_bytes": trace.size,
        "format_version": trace.header.get("version"),
        "detrun_version": trace.header.get("detrun_version"),
        "created": trace.header.get("created"),
        "complete": trace.complete,
        "end_reason": end.get("reason"),
        "exit_status": end.get("exit_status"),
        # A hook that failed while recording (any process's): such a trace cannot vouch for its replay.
        "hook_failures": [f for f in end.get("hook_failures") or [] if isinstance(f, str)],
        "script": trace.header.get("script", {}),
        "argv": trace.header.get("argv", []),
        "command": trace.header.get("command"),
        # The ranks of a launched command: role, rank, node and world size, and how each ended.
        "processes": [{**key, **{k: v for k, v in (trace.events[role].get("process.end") or [{}])[-1].items()
                                 if k in ("complete", "steps", "exit_status", "final_digest")}}
                      for role, key in trace.process_keys().items()],
        "cwd": trace.header.get("cwd"),
        "settings": trace.header.get("settings", {}),
        "env": trace.header.get("env", {}),
        "events": {role: dict(sorted(kinds.items())) for role, kinds in trace.counts.items() if kinds},
        "steps": len(steps),
        "bytes_per_step": round(trace.size / len(steps), 1) if steps else None,
        "final_digest": f"{end['final_digest']:08x}" if end.get("final_digest") is not None else None,
        "first_losses": [s[1] for s in steps[:5]],
        # Backend flag changes the script made: where, at which optimizer step, and what changed
        # (the reader checked every payload against its schema, so each is [step, site, api, flags]).
        "backend_changes": [{"step": c[0], "site": c[1], "call": c[2], "flags": c[3]} for c in trace.of(BACKENDS_SET)],
        "inputs": _inputs(trace),
        "outputs": [{"path": o["path"], "version": o["version"], "format": o["format"], "size": o["size"]}
                    for o in trace.of(FILE_OUTPUT)],
    }


def _inputs(trace: Trace) -> list[dict[str, Any]]:
    """Return the files the run read, each version with its fingerprint and whether a copy was kept."""
    kept = {(k["path"], k["read"]): k for k in trace.of(FILE_KEPT)}
    inputs = []
    for payload in sorted(trace.of(FILE_INPUT), key=lambda p: (p["path"], p["read"])):
        entry = {key: payload[key] for key in ("path", "read", "size", "sha256", "sampled")}
        overwritten = kept.get((payload["path"], payload["read"]))
        if overwritten is not None:
            entry["overwritten"] = {"sha256": overwritten["sha256"], "kept": overwritten["kept"]}
        inputs.append(entry)
    return inputs


def render(summary: dict[str, Any]) -> str:
    """Return the human-readable view of a summary."""
    script = summary["script"]
    env = summary["env"]
    libraries = ", ".join(f"{k} {v}" for k, v in env.get("libraries", {}).items())
    status = "complete" if summary["complete"] else f"INCOMPLETE ({summary['end_reason']})"
    lines = [
        f"trace      {summary['path']} ({format_bytes(summary['size_bytes'])}, format {summary['format_version']}, "
        f"detrun {summary['detrun_version']})",
        f"status     {status}; script exit status {summary['exit_status']}",
        *([f"warning    {len(summary['hook_failures'])} detrun hook failure(s) while recording, so a replay of this "
           f"trace is at best UNVERIFIED; the first: {summary['hook_failures'][0]}"] if summary["hook_failures"] else []),
        f"recorded   {summary['created']} in {summary['cwd']}",
        *([f"command    {shell_words(summary['command'])}"] if summary.get("command") is not None else [
            f"script     {'-m ' if script.get('module') else ''}{script.get('name')}"
            + (f" (sha256 {str(script.get('sha256'))[:16]}…)" if script.get("sha256") else ""),
            f"argv       {summary['argv']}"]),
        f"hash seed  {_hash_seed(summary['settings'])}",
        f"settings   {describe_settings(summary['settings'])}",
        f"python     {env.get('python', {}).get('version')} on {env.get('os', {}).get('system')} "
        f"{env.get('cpu', {}).get('machine')}",
        f"libraries  {libraries or 'none'}",
        f"steps      {summary['steps']}"
        + (f" ({summary['bytes_per_step']} B/step), final digest {summary['final_digest']}" if summary["steps"] else ""),
        *_process_lines(summary.get("processes") or []),
        "events",
    ]
    lines.pop()  # "events" comes after the files
    lines.append(f"inputs     {len(summary['inputs'])} file version(s) read" + (":" if summary["inputs"] else ""))
    for entry in summary["inputs"][:MAX_SHOWN]:
        overwritten = entry.get("overwritten")
        note = "" if overwritten is None else (
            "; overwritten by the run, kept beside the trace" if overwritten["kept"] else
            f"; overwritten by the run, not kept (sha256 {overwritten['sha256']})")
        lines.append(f"  {entry['path']}  {format_bytes(entry['size'])}  sha256 {entry['sha256'][:12]}…"
                     f"{' (sampled)' if entry['sampled'] else ''}{note}")
    if len(summary["inputs"]) > MAX_SHOWN:
        lines.append(f"  … {len(summary['inputs']) - MAX_SHOWN} more (--json lists them all)")
    outputs = summary["outputs"]
    lines.append(f"outputs    {len(outputs)} written file version(s)"
                 + (f": {', '.join(sorted({o['path'] for o in outputs})[:5])}" if outputs else "")
                 + (" …" if len({o['path'] for o in outputs}) > 5 else ""))
    lines.append("events")
    for role, kinds in summary["events"].items():
        for kind, count in kinds.items():
            lines.append(f"  {role:<10} {kind:<24} {count}")
    if any(role != "main" for role in summary["events"]):
        lines.append(SEGMENT_LEGEND)
    return "\n".join(lines)


def _process_lines(processes: list[dict[str, Any]]) -> list[str]:
    """Return one line per recorded rank: its role, place in the run, steps and how it ended."""
    if not processes:
        return []
    lines = [f"processes  {len(processes)} (world size {processes[0].get('world_size')})"]
    for process in processes:
        place = (f"rank {process.get('rank')}" if process.get("rank") is not None else process.get("role"))
        node = f", node {process['node_rank']}" if process.get("node_rank") is not None else ""
        local = f", local rank {process['local_rank']}" if process.get("local_rank") is not None else ""
        ended = ("complete" if process.get("complete") else "INCOMPLETE") + (
            f", exit status {process['exit_status']}" if process.get("exit_status") is not None else "")
        lines.append(f"  {process.get('role'):<10} {place}{node}{local}: {process.get('steps', 0)} steps, {ended}")
    return lines


def _hash_seed(settings: dict[str, Any]) -> str:
    """Return the recorded hash seed as shown; an in-process recording ran with its interpreter's own."""
    if settings.get("in_process"):
        return "the recording interpreter's own (recorded in-process by detrun.record())"
    return str(settings.get("hashseed"))


MAX_SHOWN = 20

# The trace segments other than `main` are DataLoader workers', named by dataloader.worker_entry.
SEGMENT_LEGEND = ("  (main: the script's process; rankR: rank R of a launched command; dlL.iE.wW: worker W of "
                  "DataLoader #L, in creation order, during its epoch E, counted from 0)")


def describe_settings(settings: dict[str, Any]) -> str:
    """Return the recorded determinism policy, digest interval and kernel capture as one line."""
    policy = settings.get("policy", "?")
    ops = settings.get("policy_ops") or []
    if policy == "minimal":
        policy = f"minimal (patches for {', '.join(map(str, ops)) or 'no op'})"
    every = settings.get("digest_every", 1)
    digests = ("within 0.25% of the step time, first 5 and last steps included" if every == 0
               else "every step" if every == 1 else f"every {every} steps")
    first, sample = settings.get("op_digests", 0), settings.get("op_digest_every", 0)
    if first or sample:
        ops = f"op output digests for the first {first} step(s)" + (f" and every {sample}th" if sample else "")
    else:
        ops = "no op output digests (--op-digests 0)"
    return (f"policy {policy}; parameters digested {digests} (--digest-every {every or 'auto'}); "
            f"CUDA kernel names for {settings.get('kernel_steps', 0)} step(s); {ops}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.argument("trace", type=click.Path(dir_okay=False))
def show_command(as_json: bool, trace: str) -> None:
    """Show what a trace holds: header, environment, event counts and steps.

    A trace from a killed recording is shown and marked INCOMPLETE.
    """
    import json

    from detrun.trace import read_trace

    summary = summarize(read_trace(trace))
    click.echo(json.dumps(summary, indent=2, default=str) if as_json else render(summary))
