"""The processes of a launched command (ranks): each one's segment or report, and how the launcher merges them.

`detrun.bootstrap` gives every rank a session of its own under its role (`rank1`). A recording rank
writes its events to a segment in the run's private scratch directory and ends it with a
`process.end` event; the process that owns the trace (the launcher's session for
`detrun record -- COMMAND`, the script's for Lightning's DDP) appends every segment when the command
ends. A replaying rank writes a report of its checks instead; the owner folds the reports into one
verdict that names the rank: `DIVERGED at step 12 on rank 1: ...`.
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import TYPE_CHECKING, Any, Callable

from detrun.bootstrap import PROCESSES_DIR
from detrun.engine.process_roles import ProcessKey, is_role, read_claims
from detrun.engine.verdict import Divergence
from detrun.errors import TargetRefused
from detrun.trace.format import DECLARE_KIND, FIRST_USER_KIND
from detrun.trace.registry import PROCESS_END

# How long the process that owns the trace waits for ranks its script started to exit.
RANK_EXIT_TIMEOUT = 120.0

if TYPE_CHECKING:
    from detrun.engine.verdict import ReplayFacts
    from detrun.runner import Outcome
    from detrun.trace import Trace, TraceWriter


def check_world(trace: Trace, key: ProcessKey, path: str) -> None:
    """Refuse to replay a rank the recording cannot feed: another world size, or a rank it never had."""
    recorded = trace.process_keys()
    sizes = sorted({k.get("world_size") for k in recorded.values() if isinstance(k.get("world_size"), int)})
    if key.world_size is not None and sizes and key.world_size not in sizes:
        raise TargetRefused(f"{path} was recorded with world size {sizes[0]}, and this replay runs world size "
                            f"{key.world_size}: replay with the recorded number of processes and nodes")
    if key.role not in recorded:
        roles = ", ".join(sorted(recorded, key=_natural)) or "none"
        raise TargetRefused(f"{path} has no recording of {key.label or key.role} (it recorded: {roles})")


def topology_cause(trace: Trace, key: ProcessKey) -> str | None:
    """Return how this rank's place differs from the recorded one (nodes, ranks per node), or None."""
    recorded = trace.process_keys().get(key.role, {})
    then, now = recorded.get("local_world_size"), key.local_world_size
    if then is None or now is None or then == now:
        return None
    return (f"the topology differs: recorded {recorded.get('world_size', '?')} ranks as {then} per node, "
            f"replay {now} per node (another topology may reduce in another order)")


def _natural(role: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"([0-9]+)", role)]


class ProcessSegments:
    """The part of the Session for the processes of a launched command (a mixin)."""

    recording: bool
    writer: TraceWriter | None
    trace: Trace | None
    settings: dict[str, Any]
    role: str
    divergences: list[Divergence]
    mismatches: list[Divergence]
    causes: list[str]
    checked: dict[str, int]
    hook_failures: list[str]
    unrecorded: list[str]
    last_digest: int | None
    scratch_dir: str | None
    steps: int
    emit: Callable[[str, Any], None]
    take: Callable[[str], Any]
    count_check: Callable[..., None]
    facts: Callable[[], ReplayFacts]
    _final_checks: Callable[..., None]

    rank_processes: list[Any]
    # Set for a rank's own session (detrun._child); None in the process that owns the trace.
    process_key: ProcessKey | None = None
    # The owner's sums over its ranks' reports (replay).
    process_steps = 0
    process_events = 0
    process_final_digest: int | None = None
    missing_processes: list[str]
    # Roles whose recording died before its segment ended (record), for the end record.
    incomplete_processes: list[str]
    # Each rank's steps, events and bytes (record), for the summary line.
    process_summaries: dict[str, dict[str, int]]

    def finish_process(self, outcome: Outcome) -> None:
        """Close a rank's session: end its segment (record) or write its report (replay)."""
        if self.recording:
            assert self.writer is not None
            self.emit(PROCESS_END, {"complete": not outcome.keyboard_interrupt,
                                    "reason": "interrupted (KeyboardInterrupt)" if outcome.keyboard_interrupt
                                    else "exited", "exit_status": outcome.exit_status, "steps": self.steps,
                                    "final_digest": self.last_digest, "hook_failures": self.hook_failures[:20]})
            events = sum(self.writer.counts.values())
            size = self.writer.close()
            os.replace(self.writer.path, self.settings["process_segment"])
            with open(self.settings["process_segment"] + ".json", "w", encoding="utf-8") as summary:
                json.dump({"steps": self.steps, "events": events, "bytes": size}, summary)
            return
        self.take(PROCESS_END)  # the recorded end this replay's end is checked against (Trace.of_process)
        self._final_checks(None if outcome.keyboard_interrupt else outcome.exit_status, outcome.keyboard_interrupt)
        facts = self.facts()
        label = self.process_key.label if self.process_key is not None else self.role
        with open(self.settings["process_report"] + ".partial", "w", encoding="utf-8") as out:
            json.dump({"label": label, "divergences": [d._asdict() for d in facts.divergences],
                       "mismatches": [d._asdict() for d in facts.mismatches], "causes": facts.causes,
                       "checks": facts.checks, "hook_failures": facts.hook_failures, "unrecorded": facts.unrecorded,
                       "steps": facts.steps, "events_used": facts.events_used, "final_digest": facts.final_digest},
                      out)
        os.replace(self.settings["process_report"] + ".partial", self.settings["process_report"])

    def wait_for_ranks(self, timeout: float = RANK_EXIT_TIMEOUT) -> None:
        """Wait for the ranks the script started itself to exit, so that their segments or reports are complete.

        Lightning's rank 0 may end before the ranks it launched; a rank still running at the deadline
        is merged as it stands (its segment incomplete, or its report missing: the verdict says so).
        """
        deadline = time.monotonic() + timeout
        for process in self.rank_processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - a rank that outlives the deadline is reported as unfinished
                continue

    def _processes_dir(self) -> str | None:
        return os.path.join(self.scratch_dir, PROCESSES_DIR) if self.scratch_dir else None

    def _note_strays(self, directory: str) -> None:
        """Note the processes that ran the user's code unrecorded: no detrun there, or a role taken twice."""
        for name in sorted(os.listdir(directory)):
            if name.startswith(("nodetrun.", "duplicate.")):
                try:
                    with open(os.path.join(directory, name), encoding="utf-8") as note:
                        what = note.read(500).strip()
                except OSError:
                    what = name
                why = "a python without detrun" if name.startswith("nodetrun.") else "a duplicate role"
                self.unrecorded.append(f"{what} ({why})")

    def merge_process_segments(self) -> None:
        """Append the ranks' finished segments to this trace (record); salvage those a killed rank left."""
        directory = self._processes_dir()
        if directory is None or not os.path.isdir(directory) or self.writer is None:
            return
        self.incomplete_processes = []
        self._note_strays(directory)
        claims = read_claims(directory)
        segments = []
        for role in sorted(claims, key=_natural):
            path = os.path.join(directory, f"{role}.seg")
            if not os.path.exists(path) and os.path.exists(path + ".partial"):
                _salvage_segment(path + ".partial", path, role)
                self.incomplete_processes.append(role)
            if os.path.exists(path):
                segments.append(path)
                self.process_summaries[claims[role].label or role] = _read_summary(path + ".json")
        if segments:
            self.writer.append_segments(segments)
        # Each node of a multi-node run writes its own file (trace.node1.zst); `detrun merge` joins them.
        nodes = {k.node_rank for k in claims.values() if (k.nodes or 0) > 1 and k.node_rank is not None}
        if len(nodes) == 1:
            self.settings["trace_path"] = node_trace_path(self.settings["trace_path"], nodes.pop())

    def merge_process_reports(self) -> None:
        """Fold the ranks' reports into this replay's facts; a recorded rank with no report is missing."""
        self.missing_processes = []
        directory = self._processes_dir()
        if directory is None or self.trace is None:
            return
        recorded = self.trace.process_keys()
        if not recorded:
            return
        replayed = read_claims(directory) if os.path.isdir(directory) else {}
        if os.path.isdir(directory):
            self._note_strays(directory)
            for name in sorted(os.listdir(directory)):
                if name.endswith(".refused"):  # a rank refused to replay (another world size): so does the run
                    with open(os.path.join(directory, name), encoding="utf-8") as note:
                        reason = note.read(4096).strip()
                    if reason:
                        raise TargetRefused(reason)
        # On one node of several, only that node's ranks replay here (each node runs its own launcher).
        nodes = {k.node_rank for k in replayed.values() if k.node_rank is not None}
        found: list[Divergence] = []
        for role, key in sorted(recorded.items(), key=lambda item: _natural(item[0])):
            if not is_role(role):
                continue  # no process of ours ever takes such a name (the trace's names are only matched)
            if nodes and key.get("node_rank") is not None and key.get("node_rank") not in nodes:
                continue
            label = ProcessKey(**{k: key.get(k) for k in ProcessKey._fields}).label or role
            try:
                with open(os.path.join(directory, f"{role}.report.json"), encoding="utf-8") as f:
                    data = json.load(f)
                divergences = [Divergence(**{**d, "parts": tuple(d.get("parts", ())), "process": label})
                               for d in data["divergences"]]
                mismatches = [Divergence(**{**d, "parts": tuple(d.get("parts", ())), "process": label})
                              for d in data["mismatches"]]
                for name, count in data["checks"].items():
                    self.count_check(str(name), int(count))
                self.hook_failures.extend(f"{label}: {f}" for f in data["hook_failures"])
                self.unrecorded.extend(f"{label}: {u}" for u in data["unrecorded"])
                self.causes.extend(c for c in data["causes"] if c not in self.causes)
                self.process_steps = max(self.process_steps, int(data["steps"]))
                self.process_events += int(data["events_used"])
                if self.process_final_digest is None and isinstance(data["final_digest"], int):
                    self.process_final_digest = data["final_digest"]
            except (OSError, ValueError, TypeError, KeyError):
                self.missing_processes.append(label)
                continue
            found.extend(divergences)
            self.mismatches.extend(mismatches)
        # The first divergence across ranks: the earliest step; at one step, a rank whose own loss
        # differs before one whose parameters only differ after the gradients were averaged.
        found.sort(key=lambda d: (d.step is None, d.step or 0, "loss" not in d.parts))
        self.divergences.extend(found)
        self.mismatches.sort(key=lambda d: (d.step is None, d.step or 0))


def node_trace_path(path: str, node: int) -> str:
    """Return the file one node of a multi-node run writes: trace.zst -> trace.node1.zst."""
    directory, name = os.path.split(path)
    stem, dot, extension = name.rpartition(".") if "." in name.lstrip(".") else (name, "", "")
    return os.path.join(directory, f"{stem}.node{node}{dot}{extension}")


def _read_summary(path: str) -> dict[str, int]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return {k: int(data[k]) for k in ("steps", "events", "bytes")}
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def _salvage_segment(partial: str, final: str, role: str) -> None:
    """Rewrite a killed rank's partial segment as a finished one whose `process.end` says it was cut short."""
    from detrun.trace.reader import salvage_objects
    from detrun.trace.writer import write_objects

    objects = salvage_objects(partial)
    os.unlink(partial)
    # A fresh marker starts a fresh table of kind ids, whatever the cut-off stream had declared.
    objects += [{"segment": role}, [DECLARE_KIND, [FIRST_USER_KIND, PROCESS_END]],
                [FIRST_USER_KIND, {"complete": False, "reason": f"the process {role} died before it finished"}]]
    write_objects(final, objects)
