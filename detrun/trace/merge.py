"""Join the per-node traces of a multi-node run into one trace that every node can replay from.

Each node of a multi-node recording writes its own file (`trace.node0.zst`, `trace.node1.zst`): its
launcher saw only its own ranks. Merging checks that the files are one run (the same script and
world size; each node once; every rank present), then copies every node's ranks into one stream:
the first node's header, with every node's environment, hash seed and command under `node_envs`,
`node_hashseeds` and `node_commands`, each node's segments in node order, and one end record.
"""
from __future__ import annotations

import os
from typing import Any

from detrun.errors import TraceError
from detrun.trace.format import END
from detrun.trace.reader import Trace, iter_objects, read_trace
from detrun.trace.writer import publish, write_objects


def merge_traces(paths: list[str], output: str, *, force: bool = False) -> dict[str, Any]:
    """Merge per-node traces into `output`; return what was merged (nodes, ranks). Refuse other runs' files."""
    if len(paths) < 2:
        raise TraceError("detrun merge needs the traces of at least two nodes")
    traces = sorted((read_trace(path) for path in paths), key=_node_of)
    _check_one_detrun(traces)
    first = traces[0]
    first_ranks = first.process_keys()
    nodes: dict[int, str] = {}
    for trace in traces:
        node = _node_of(trace)
        if node in nodes:
            raise TraceError(f"{trace.path} and {nodes[node]} both hold node {node}: merge each node's file once")
        nodes[node] = trace.path
        # Each node's launcher command differs (its --node_rank): the commands are kept per node instead.
        for name in ("script", "argv"):
            if trace.header.get(name) != first.header.get(name):
                raise TraceError(f"{trace.path} recorded another {name} than {first.path}: not one run")
        if trace is not first and any(role in first_ranks for role in trace.process_keys()):
            raise TraceError(f"{trace.path} and {first.path} recorded the same rank: not two nodes of one run")
    sizes = {key.get("world_size") for trace in traces for key in trace.process_keys().values()}
    if len(sizes) > 1:
        raise TraceError(f"the traces ran with different world sizes ({', '.join(map(str, sorted(sizes, key=str)))})")
    recorded = sum(len(trace.process_keys()) for trace in traces)
    if sizes and None not in sizes and recorded != next(iter(sizes)):
        missing = next(iter(sizes)) - recorded
        raise TraceError(f"the world size is {next(iter(sizes))} but these traces hold {recorded} ranks: "
                         f"{missing} rank(s) are in a node's file not given here")
    # Each node's launcher chose its own hash seed; a replay gives each node's ranks theirs (detrun.bootstrap).
    header = {**first.header,
              "node_envs": {str(node): trace.header.get("env", {}) for node, trace in zip(sorted(nodes), traces)},
              "node_hashseeds": {str(node): trace.header.get("settings", {}).get("hashseed")
                                 for node, trace in zip(sorted(nodes), traces)},
              **({"node_commands": {str(node): trace.header["command"] for node, trace in zip(sorted(nodes), traces)}}
                 if "command" in first.header else {})}
    objects: list[Any] = [header]
    for trace in traces:
        stream = iter_objects(trace.path)
        next(stream)  # the node's header
        objects.append({"segment": "main"})  # a fresh role and kind table for this node's stream
        objects.extend(obj for obj in stream if not (type(obj) is list and len(obj) == 2 and obj[0] == END))
    objects.append([END, _merged_end(traces)])
    partial = output + f".{os.getpid()}.merging"
    write_objects(partial, objects)
    publish(partial, output, force=force)
    return {"nodes": sorted(nodes), "ranks": recorded, "output": output}


def _check_one_detrun(traces: list[Trace]) -> None:
    """Refuse traces that write a kind of event in different versions (a merged trace has one per kind)."""
    # A replay reads each kind's events in the trace's one version (the DataLoader's batch digests:
    # crc32 in version 1, XXH3 in 2); a node's events in another would all read as departures.
    seen: dict[str, tuple[int, str]] = {}
    for trace in traces:
        for kind, version in sorted(trace.declared_versions().items()):
            first_version, first_path = seen.setdefault(kind, (version, trace.path))
            if version != first_version:
                raise TraceError(f"{trace.path} holds {kind} events of version {version} and {first_path} of "
                                 f"version {first_version}: record every node with one detrun release")


def _node_of(trace: Trace) -> int:
    """Return the node rank a per-node trace's ranks ran on (0 when they do not say)."""
    ranks = {key.get("node_rank") for key in trace.process_keys().values()}
    ranks.discard(None)
    if len(ranks) > 1:
        raise TraceError(f"{trace.path} holds the ranks of several nodes ({sorted(ranks)}): it is merged already")
    return int(ranks.pop()) if ranks else 0


def _merged_end(traces: list[Trace]) -> dict[str, Any]:
    """Return the end record of the merged run: complete only if every node's is; the first failure's status."""
    ends = [trace.end or {} for trace in traces]
    incomplete = [f"{trace.path}: {end.get('reason')}" for trace, end in zip(traces, ends) if not trace.complete]
    statuses = [end.get("exit_status") for end in ends]
    counts: dict[str, int] = {}
    for end in ends:
        for kind, count in (end.get("counts") or {}).items():
            counts[kind] = counts.get(kind, 0) + count
    return {"complete": not incomplete, "reason": "; ".join(incomplete)[:4000] or "exited",
            "exit_status": next((s for s in statuses if s), statuses[0]),
            "steps": max(int(end.get("steps") or 0) for end in ends), "final_digest": ends[0].get("final_digest"),
            "counts": counts, "hook_failures": [f for end in ends for f in (end.get("hook_failures") or [])][:1024]}
