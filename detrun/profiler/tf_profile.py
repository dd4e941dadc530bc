"""`detrun profile` for a TensorFlow script: the same capture → knowledge base → report path as torch.

The capture runs in a child interpreter (`detrun.profiler.tf_capture`), so that TensorFlow is
never imported into detrun's own process; it lists every op type the script ran, with its user
line. If an op raised under op determinism, that op is noted and the script runs a second time
with determinism off, to capture the ops after it. Here the captured op types are matched against
the knowledge base (`kb.KnowledgeBase`, data in kb/tensorflow.json), turned into findings and
handed to the report that torch's profile uses too: the same table, summary line and JSON
(SCHEMA.md, with `framework: "tensorflow"`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any, TextIO

from detrun.errors import DetrunError, ExitCode
from detrun.profiler.findings import UNKNOWN_SITE, CallSite
from detrun.profiler.kb import KnowledgeBase, KnowledgeBaseError, Rule, installed_version
from detrun.profiler.profile_run import ProfileOptions, json_destination
from detrun.runner import Runner, Target

_MAX_SITES = 16
_MAX_NAMES = 8
RAISED_HERE = "raised-here"  # the source of a claim this run established: the op raised under op determinism


@dataclasses.dataclass(frozen=True)
class TFOpName:
    """A TensorFlow op type, named like an aten op for the report (TensorFlow has no overloads)."""

    name: str
    overload: str = "default"

    @property
    def display(self) -> str:
        """Return the op type."""
        return self.name


@dataclasses.dataclass
class TFOpRecord:
    """Everything the capture saw of one TensorFlow op type, over one or two runs (an ObservedOp)."""

    info: TFOpName
    device: str
    rule: Rule | None = None
    cuda_rule: Rule | None = None
    count: int = 0
    phases: set[str] = dataclasses.field(default_factory=set)
    sites: Counter[CallSite] = dataclasses.field(default_factory=Counter)
    dtypes: set[str] = dataclasses.field(default_factory=set)
    graph_names: list[str] = dataclasses.field(default_factory=list)
    raised: str | None = None  # the error op determinism raised for it here
    shapes: list[list[list[int]]] = dataclasses.field(default_factory=list)
    verdicts: list[Any] = dataclasses.field(default_factory=list)  # no empirical check for TensorFlow
    kernels: list[str] = dataclasses.field(default_factory=list)

    @property
    def call_site(self) -> CallSite:
        """Return the most frequent user line."""
        return self.sites.most_common(1)[0][0] if self.sites else UNKNOWN_SITE

    @property
    def call_sites(self) -> dict[CallSite, int]:
        """Return the most frequent user lines with their counts."""
        return dict(self.sites.most_common(_MAX_SITES))

    @property
    def measured_nondeterministic(self) -> bool | None:
        """Return None: TensorFlow ops are not re-run to compare bits."""
        return None

    def extra_json(self) -> dict[str, Any]:
        """Return TensorFlow's own fields: graph node names (the layer scope) and the error raised here."""
        return {"graph_names": list(self.graph_names), "raised_here": self.raised}


# ------------------------------------------------------------------------ capture (child runs)


def capture_runs(target: Target, steps: int, stdout: TextIO | int | None = None) -> list[dict[str, Any]]:
    """Run the capture under op determinism, and again without it if an op refused it; return the runs."""
    first = _run_worker(target, steps, determinism=True, stdout=stdout)
    runs = [first]
    if first.get("determinism_error"):
        # The first op without a deterministic implementation ended that run; capture the rest
        # with determinism off, which is how the script runs without detrun.
        from detrun.profiler.report import say

        ops = ", ".join(item["op"] for item in first["raised"])
        say(sys.stderr, f"{ops} refused op determinism; running the script again without it to list "
                        "the ops after it")
        runs.append(_run_worker(target, steps, determinism=False, stdout=stdout))
    return runs


def _run_worker(target: Target, steps: int, *, determinism: bool, stdout: TextIO | int | None) -> dict[str, Any]:
    """Run the script in a child interpreter under the capture; return what it captured."""
    handle, path = tempfile.mkstemp(prefix="detrun-tfprofile-", suffix=".json")
    os.close(handle)
    try:
        command = [sys.executable, "-m", "detrun.profiler.tf_capture", "--worker", path, "--steps", str(steps or 0)]
        if not determinism:
            command.append("--no-determinism")
        if target.is_module:
            command.append("-m")
        command += ["--", target.name, *target.args]
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        status = subprocess.run(command, stdout=stdout, env=env, check=False).returncode
        try:
            with open(path, encoding="utf-8") as handle_in:
                result = json.load(handle_in)
        except (OSError, ValueError):
            result = {"ops": {}, "raised": [], "steps": 0}
        result["exit_status"] = status
        return result
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


# ------------------------------------------------------------------------ knowledge base


def merge_runs(runs: list[dict[str, Any]], kb: KnowledgeBase, kb_device: str | None) -> list[TFOpRecord]:
    """Merge the captures of one or two runs into one record per op type, with its knowledge-base rules.

    `kb_device` is "cuda" to judge every op by its GPU behaviour, or None for the device it ran on.
    """
    device = "cuda" if any("cuda" in run.get("ran_on", []) for run in runs) else "cpu"
    raised = {item["op"]: item["message"] for run in runs for item in run.get("raised", [])}
    records: dict[str, TFOpRecord] = {}
    for run in runs:
        for op, captured in run.get("ops", {}).items():
            record = records.setdefault(op, TFOpRecord(TFOpName(op), device))
            record.count = max(record.count, captured["count"])  # the same ops, seen again
            fresh = [n for n in captured.get("names", []) if n not in record.graph_names]
            record.graph_names += fresh[:_MAX_NAMES - len(record.graph_names)]
            for site in captured["sites"]:
                record.sites[CallSite(site["file"], site["line"], site["function"])] += site["count"]
            record.phases.update(captured["phases"])
            record.dtypes.update(captured.get("dtypes", []))
    for op in raised:
        records.setdefault(op, TFOpRecord(TFOpName(op), device, count=1))
    for op, record in records.items():
        record.raised = raised.get(op)
        record.cuda_rule = _with_evidence(kb.match("cuda", op, "default", {}), op, "cuda", record.raised)
        reported = kb_device or device
        record.rule = (record.cuda_rule if reported == "cuda"
                       else _with_evidence(kb.match(reported, op, "default", {}), op, reported, record.raised))
    return list(records.values())


def _with_evidence(rule: Rule | None, op: str, device: str, raised: str | None) -> Rule | None:
    """Add what this run established to a rule: an op that raised under op determinism raises there."""
    if raised is None:
        return rule
    if rule is None:
        # TensorFlow refuses op determinism only for ops that have no deterministic kernel.
        return Rule(id=op, ops=(op,), device=device, versions="", when=(), nondeterministic=True,
                    raises_in_det_mode=True, det_mode_fixes=False, source=(RAISED_HERE,), api="", note=raised,
                    measured_h100=None, framework="tensorflow")
    return dataclasses.replace(rule, raises_in_det_mode=True, source=(*rule.source, RAISED_HERE))


# ------------------------------------------------------------------------ `detrun profile`

_TF_IMPORT = re.compile(r"^\s*(import|from)\s+(tensorflow|keras|tf_keras)\b", re.MULTILINE)
_TORCH_IMPORT = re.compile(r"^\s*(import|from)\s+torch\b", re.MULTILINE)


def uses_tensorflow(path: str) -> bool:
    """Say whether a script imports TensorFlow/Keras and not torch (how `--framework auto` picks)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            source = f.read()
    except OSError:
        return False
    return bool(_TF_IMPORT.search(source)) and not _TORCH_IMPORT.search(source)


def run_tensorflow_profile(options: ProfileOptions, stream: TextIO | None = None) -> int:
    """Profile a TF script for `detrun profile`: table and summary on stderr, optional JSON; return the exit code."""
    from detrun.profiler import report

    stream = stream or sys.stderr
    runner = Runner(options.target)  # a missing script fails here
    start_dir = os.getcwd()
    json_path = json_destination(options)
    version = installed_version("tensorflow", "tensorflow-cpu")
    try:
        kb = KnowledgeBase.load(version, framework="tensorflow")
    except KnowledgeBaseError as exc:
        raise DetrunError(str(exc)) from None

    if not options.quiet:
        report.announce(stream, report.TENSORFLOW, options.target.display, options.steps, options.device)
    started = time.perf_counter()
    runs = capture_runs(options.target, options.steps)
    elapsed = time.perf_counter() - started
    last = runs[-1]
    records = merge_runs(runs, kb, "cuda" if options.device == "cuda" else None)
    stopped = bool(last.get("stopped_by_limit"))
    result = report.Report(
        findings=report.build_findings(records, "cuda" if options.device == "cuda" else None, with_patches=False),
        target={"name": options.target.name, "args": list(options.target.args),
                "module": options.target.is_module, "path": runner.path},
        reported_device=options.device,
        ran_on=sorted({r.device for r in records}) or ["cpu"],
        steps={"limit": options.steps, "completed": max(int(run.get("steps", 0)) for run in runs),
               "stopped_by_limit": stopped},
        exit_status=0 if stopped else int(last.get("exit_status", 0)),
        empirical={"enabled": False, "signatures_checked": 0, "seconds": 0.0},
        kb={"file": kb.path, "torch_version": None, "framework_version": version, "rules_in_range": len(kb.rules)},
        hook_errors=[],
        torch_version=None,
        gpu=next((run["gpu"] for run in runs if run.get("gpu")), None),
        framework=report.TENSORFLOW,
        framework_version=version,
        seconds=elapsed,
    )
    result.fail_on_triggered = options.fail_on == "nondeterministic" and result.fail_on_nondeterministic
    report.publish(result, stream, quiet=options.quiet, show_all=options.show_all, cwd=start_dir,
                   json_path=json_path, json_shown=options.json_path)
    return int(ExitCode.NONDETERMINISTIC) if result.fail_on_triggered else 0
