"""Profile a TensorFlow script: which ops it runs that are nondeterministic on GPU or refuse op determinism.

`profile_tensorflow_script(target, steps)` runs the script in a child interpreter with
`tf.config.experimental.enable_op_determinism()` on (and detrun's TensorFlow source installed,
so unseeded random ops and `Generator.from_non_deterministic_state()` still run) and captures
every op it executes eagerly or builds into a graph (`tf.function`, `model.fit`, `tf.data`
functions) through TensorFlow's op callbacks. Capturing graph ops when they are built, before
they run, is what lets one run list them all instead of stopping at the first one that raises.
If an op does raise under determinism (an `UnimplementedError` on GPU), that op is noted and the
script runs a second time with determinism off to capture the rest.

Each captured op type is matched against detrun/profiler/kb/tensorflow.json (data, with the
source of every claim), and each op is given the first line of user code behind it: for a
gradient op, the forward line that created the op it differentiates (from the graph op's
creation traceback, or for eager code from the call site noted when the forward op ran).

    python -m detrun.profiler.tf_profile [--steps K] [--all] script.py [args...]   # JSON on stdout
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections import Counter
from typing import Any, Iterable, Sequence, TextIO

from detrun.runner import Target

KB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kb", "tensorflow.json")
_DETRUN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MAX_SITES = 16
_MAX_NAMES = 8
_MAX_EAGER_SITES = 200_000


# ------------------------------------------------------------------------ knowledge base


def load_knowledge_base(path: str = KB_PATH) -> dict[str, dict[str, Any]]:
    """Return the knowledge-base entries that hold for the installed TF version, by op type."""
    from detrun.profiler.kb import parse_version, version_matches

    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    tf_version = None
    for distribution in ("tensorflow", "tensorflow-cpu"):
        if _installed(distribution):
            from importlib.metadata import version

            tf_version = parse_version(version(distribution))
            break
    entries: dict[str, dict[str, Any]] = {}
    for entry in data["ops"]:
        if tf_version is not None and entry.get("tf") and not version_matches(entry["tf"], tf_version):
            continue
        for op in entry["ops"]:
            entries.setdefault(op, entry)
    return entries


def _installed(distribution: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(distribution)
    except PackageNotFoundError:
        return False
    return True


# ------------------------------------------------------------------------ the public entry point


def profile_tensorflow_script(target: Target | str | Sequence[str], steps: int | None = None, *,
                              include_all: bool = False, stdout: TextIO | int | None = None) -> list[dict[str, Any]]:
    """Run a TF script under op determinism and list the ops the knowledge base flags, with call sites.

    `target` is a Target, a script path, or [script, *args]; `steps` stops the script cleanly
    after that many training steps (None or 0: run to the end). `include_all` lists every op
    type the script ran, flagged or not. The script's stdout goes to `stdout` (default: ours).
    """
    target = _as_target(target)
    first = _run_worker(target, steps, determinism=True, stdout=stdout)
    runs = [first]
    if first.get("determinism_error"):
        # The first op without a deterministic implementation ended that run; capture the rest
        # with determinism off, which is how the script runs without detrun.
        ops = ", ".join(item["op"] for item in first["raised"])
        print(f"detrun: {ops} refused op determinism; running the script again without it to list "
              "the ops after it", file=sys.stderr)
        runs.append(_run_worker(target, steps, determinism=False, stdout=stdout))
    return _report(runs, load_knowledge_base(), include_all)


def _as_target(target: Target | str | Sequence[str]) -> Target:
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        return Target(target)
    items = list(target)
    return Target(items[0], tuple(items[1:]))


def _run_worker(target: Target, steps: int | None, *, determinism: bool,
                stdout: TextIO | int | None) -> dict[str, Any]:
    """Run the script in a child interpreter under the capture; return what it captured."""
    handle, path = tempfile.mkstemp(prefix="detrun-tfprofile-", suffix=".json")
    os.close(handle)
    try:
        command = [sys.executable, "-m", "detrun.profiler.tf_profile", "--worker", path,
                   "--steps", str(steps or 0)]
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


def _report(runs: list[dict[str, Any]], kb: dict[str, dict[str, Any]], include_all: bool) -> list[dict[str, Any]]:
    """Merge the captures of one or two runs into the list of op dicts, worst first."""
    merged: dict[str, dict[str, Any]] = {}
    raised = {item["op"]: item["message"] for run in runs for item in run.get("raised", [])}
    for run in runs:
        for op, captured in run.get("ops", {}).items():
            slot = merged.setdefault(op, {"count": 0, "sites": Counter(), "phases": set(), "names": []})
            slot["count"] = max(slot["count"], captured["count"])  # the same ops, seen again
            fresh = [n for n in captured.get("names", []) if n not in slot["names"]]
            slot["names"] += fresh[:_MAX_NAMES - len(slot["names"])]
            for site in captured["sites"]:
                slot["sites"][(site["file"], site["line"], site["function"])] += site["count"]
            slot["phases"].update(captured["phases"])
    for op in raised:
        merged.setdefault(op, {"count": 1, "sites": Counter(), "phases": set(), "names": []})
    findings = []
    for op, slot in merged.items():
        entry = kb.get(op)
        flagged = entry is not None and (entry.get("nondeterministic_gpu") or entry.get("raises_with_op_determinism")
                                         or entry.get("nondeterministic_cpu"))
        if not (flagged or op in raised or include_all):
            continue
        sites = [{"file": f, "line": l, "function": fn, "count": c}
                 for (f, l, fn), c in slot["sites"].most_common(_MAX_SITES)]
        findings.append({
            "op": op,
            "count": slot["count"],
            "call_site": {k: sites[0][k] for k in ("file", "line", "function")} if sites
            else {"file": "<unknown>", "line": 0, "function": "<unknown>"},
            "call_sites": sites,
            "phases": sorted(slot["phases"]),
            "graph_names": slot["names"],
            "api": entry.get("api") if entry else None,
            "nondeterministic_gpu": entry.get("nondeterministic_gpu") if entry else None,
            "nondeterministic_cpu": entry.get("nondeterministic_cpu", False) if entry else None,
            "raises_with_op_determinism": (True if op in raised else entry.get("raises_with_op_determinism")
                                           if entry else None),
            "op_determinism_fixes": entry.get("op_determinism_fixes") if entry else None,
            "raised_here": raised.get(op),
            "note": entry.get("note") if entry else None,
            "source": list(entry.get("source", [])) + (["raised-here"] if op in raised else []) if entry
            else (["raised-here"] if op in raised else []),
        })
    rank = {True: 0, None: 1, False: 2}
    findings.sort(key=lambda f: (f["raised_here"] is None, rank[f["raises_with_op_determinism"]],
                                 not f["nondeterministic_gpu"], -f["count"], f["op"]))
    return findings


# ------------------------------------------------------------------------ the worker (child side)


class _StepLimit(SystemExit):
    """End the script cleanly after K steps; a SystemExit so `except Exception:` does not swallow it."""

    def __init__(self) -> None:
        super().__init__(0)


def _user_prefixes() -> tuple[str, ...]:
    """Return the directories whose frames are never the user's call site."""
    prefixes = {_DETRUN_DIR}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            prefixes.add(os.path.abspath(path))
    return tuple(p + os.sep for p in sorted(prefixes))


class OpCapture:
    """Count every op type TF runs eagerly or builds into a graph, with the user line behind it."""

    def __init__(self) -> None:
        self.ops: dict[str, dict[str, Any]] = {}
        self._internal = _user_prefixes()
        self._eager_sites: dict[tuple[str, int, int], tuple[str, int, str]] = {}
        self._lock = threading.Lock()
        self.stop_requested = False
        self.source_mapper_stacks: Any = None  # tensorflow.python.util.tf_stack's, once TF is imported

    def _is_user(self, filename: str) -> bool:
        return not (filename.startswith(self._internal) or filename.startswith("<")
                    or "site-packages" in filename or "dist-packages" in filename)

    def _stack_site(self) -> tuple[tuple[str, int, str] | None, Any]:
        """Return the nearest user frame, and the forward site if a gradient function is on the stack."""
        frame = sys._getframe(2)
        user = None
        forward = None
        source_map = self._autograph_map()
        while frame is not None:
            code = frame.f_code
            if forward is None and code.co_name in ("_gradient_function", "_GradientsHelper"):
                forward = self._forward_site(frame)
            if user is None:
                # Code converted by AutoGraph runs from a generated file; map it back to the user's.
                filename, line, function = source_map.get((code.co_filename, frame.f_lineno),
                                                          (code.co_filename, frame.f_lineno, code.co_name))
                if self._is_user(filename):
                    user = (filename, line, function)
            frame = frame.f_back
        return user, forward

    def _autograph_map(self) -> dict[tuple[str, int], tuple[str, int, str]]:
        """Return AutoGraph's map from generated lines to the user's, for this thread."""
        stacks = self.source_mapper_stacks
        if stacks is None:
            return {}
        stack = stacks.get(threading.get_ident())
        if not stack or len(stack) < 2:
            return {}
        try:
            return stack[-1].get_effective_source_map()
        except Exception:  # noqa: BLE001
            return {}

    def _forward_site(self, frame: Any) -> tuple[str, int, str] | bool:
        """Return the user line that built the op being differentiated (True: backward, site unknown)."""
        local = frame.f_locals
        candidates: list[Any] = []
        if "op" in local:  # gradients_util._GradientsHelper: the graph op itself
            candidates.append(local["op"])
        op_name, inputs = local.get("op_name"), local.get("inputs") or ()
        if op_name is not None:  # backprop._gradient_function: the forward op's type and inputs
            for position, tensor in enumerate(inputs):
                # The tape hands over only the inputs the gradient needs (None for the others).
                site = self._eager_sites.get((op_name, position, id(tensor))) if tensor is not None else None
                if site is not None:
                    return site
            for tensor in inputs:
                try:  # graph tensors: the forward op is the consumer of that type
                    candidates += [op for op in tensor.consumers() if op.type == op_name]
                except Exception:  # noqa: BLE001 - eager tensors have no consumers
                    continue
        for op in candidates:
            try:
                trace = list(op.traceback)
            except Exception:  # noqa: BLE001
                continue
            for entry in reversed(trace):
                if self._is_user(entry.filename):
                    return (entry.filename, entry.lineno, entry.name)
        return True

    def callback(self, op_type: str, inputs: Any, attrs: Any, outputs: Any, op_name: Any = None,
                 graph: Any = None) -> None:
        """The op callback: note the op type and its user line; never change the op's outputs."""
        try:
            if isinstance(op_type, bytes):  # eager execution passes bytes
                op_type = op_type.decode()
            user, forward = self._stack_site()
            phase = "backward" if forward else "forward"
            site = forward if isinstance(forward, tuple) else user
            with self._lock:
                slot = self.ops.setdefault(op_type, {"count": 0, "sites": Counter(), "phases": set(), "names": []})
                slot["count"] += 1
                slot["phases"].add(phase)
                if graph is not None and op_name and len(slot["names"]) < _MAX_NAMES:
                    # Graph node names carry the layer scope ('sequential/conv/...'): where in a
                    # Keras model the op sits when the user line is just `model.fit(...)`.
                    name = op_name.decode() if isinstance(op_name, bytes) else str(op_name)
                    if name not in slot["names"]:
                        slot["names"].append(name)
                if site is not None:
                    slot["sites"][site] += 1
                if graph is None and user is not None and forward is None:
                    # The tape keeps a forward op's inputs alive until its gradient runs, so
                    # their ids name the op then.
                    if len(self._eager_sites) > _MAX_EAGER_SITES:
                        self._eager_sites.clear()
                    for position, tensor in enumerate(inputs or ()):
                        self._eager_sites[(op_type, position, id(tensor))] = user
        except Exception:  # noqa: BLE001 - bookkeeping must never break the script
            pass
        if self.stop_requested and threading.current_thread() is threading.main_thread():
            self.stop_requested = False
            raise _StepLimit()

    def to_json(self) -> dict[str, Any]:
        return {op: {"count": slot["count"], "phases": sorted(slot["phases"]), "names": slot["names"],
                     "sites": [{"file": f, "line": l, "function": fn, "count": c}
                               for (f, l, fn), c in slot["sites"].most_common(_MAX_SITES)]}
                for op, slot in self.ops.items()}


def _determinism_op(exc: BaseException, capture: OpCapture) -> str | None:
    """Return the op type behind an error that op determinism raised, or None for other errors."""
    message = str(exc)
    # UnimplementedError ("Deterministic GPU implementation of ... not available"),
    # FailedPreconditionError ("Timestamp cannot be called when determinism is enabled").
    if "determinis" not in message.lower():
        return None
    op = getattr(getattr(exc, "op", None), "type", None)
    if op:
        return str(op)
    match = re.search(r"\[Op:(\w+)\]", message) or re.search(r"__wrapped__(\w+?)_device_", message)
    if match:
        return match.group(1)
    for known in sorted(capture.ops, key=len, reverse=True):
        if known in message:
            return known
    return "<unknown>"


def _walk(tb: Any) -> Iterable[Any]:
    while tb is not None:
        yield tb
        tb = tb.tb_next


def _worker(out_path: str, target: Target, steps: int, determinism: bool) -> None:
    """Run the target under the capture and write what it saw to out_path; exit as the script did."""
    from detrun.engine.session import Session
    from detrun.engine.sources.tf_runtime import TensorFlowSource
    from detrun.engine.sources.tf_steps import TFStepVerifier
    from detrun.runner import Runner

    capture = OpCapture()
    raised: list[dict[str, str]] = []

    class ProfileSession(Session):
        """A record-mode session that keeps nothing and stops the script after `steps` steps."""

        def emit(self, kind: str, payload: Any) -> None:
            return None

        def on_step(self) -> None:
            if steps and self.steps >= steps:
                if threading.current_thread() is threading.main_thread():
                    raise _StepLimit()
                capture.stop_requested = True  # a py_function step: stop at the next eager op

    session = ProfileSession("record", quiet=True, settings={"tf_op_determinism": determinism,
                                                              "digest_every": 1 << 62})

    def hook(tf: Any) -> None:
        from tensorflow.python.framework import op_callbacks  # type: ignore[import-not-found]
        from tensorflow.python.util import tf_stack  # type: ignore[import-not-found]

        capture.source_mapper_stacks = tf_stack._source_mapper_stacks  # noqa: SLF001
        op_callbacks.add_op_callback(capture.callback)

    session.when_imported("tensorflow", hook)
    session.install([TensorFlowSource(), TFStepVerifier()])

    def on_exception(exc: BaseException) -> None:
        op = _determinism_op(exc, capture)
        if op is None:
            return
        raised.append({"op": op, "message": str(exc).strip().splitlines()[0][:400]})
        # The op callback never saw an eager op that raised: its user line is in the traceback.
        frames = [(tb.tb_frame.f_code, tb.tb_lineno) for tb in _walk(exc.__traceback__)]
        for code, line in reversed(frames):
            if capture._is_user(code.co_filename):  # noqa: SLF001
                slot = capture.ops.setdefault(op, {"count": 0, "sites": Counter(), "phases": set(), "names": []})
                if not slot["sites"]:
                    slot["count"] += 1
                    slot["phases"].add("forward")
                    slot["sites"][(code.co_filename, line, code.co_name)] += 1
                break

    outcome = Runner(target).run(on_exception=on_exception)
    stopped = isinstance(outcome.system_exit, _StepLimit)
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump({"ops": capture.to_json(), "raised": raised, "steps": session.steps,
                   "stopped_by_limit": stopped, "determinism": determinism,
                   "determinism_error": bool(raised)}, handle)
    session.uninstall()
    if stopped:
        sys.exit(0)
    outcome.finish()


def main(argv: list[str] | None = None) -> None:
    """`python -m detrun.profiler.tf_profile [--steps K] [--all] [-m] SCRIPT [ARGS...]`: print the JSON list."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m detrun.profiler.tf_profile",
                                     description="List the ops a TensorFlow script runs that are "
                                                 "nondeterministic on GPU or raise under op determinism.")
    parser.add_argument("--steps", type=int, default=0, help="stop after K training steps (0: run to the end)")
    parser.add_argument("--all", action="store_true", help="list every op type, flagged or not")
    parser.add_argument("-m", dest="module", action="store_true", help="SCRIPT is a module name")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--no-determinism", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    args = options.args[1:] if options.args[:1] == ["--"] else options.args
    target = Target(options.script, tuple(args), options.module)
    if options.worker:
        _worker(options.worker, target, options.steps, not options.no_determinism)
        return
    # The script's own stdout goes to stderr so that stdout carries only the JSON.
    findings = profile_tensorflow_script(target, options.steps, include_all=options.all, stdout=sys.stderr.fileno())
    json.dump(findings, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()


# ------------------------------------------------------------------------ `detrun profile` for TF

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


def blocks_reproducibility(finding: dict[str, Any]) -> bool:
    """Say whether an op still changes bits under detrun's policy (op determinism on)."""
    if finding.get("raised_here") or finding.get("raises_with_op_determinism"):
        return True
    return bool(finding.get("nondeterministic_gpu")) and finding.get("op_determinism_fixes") is False


def run_tensorflow_profile(target: Target, steps: int, json_path: str | None, fail_on: str | None,
                           quiet: bool, show_all: bool) -> int:
    """Profile a TF script for `detrun profile`: table on stderr, optional JSON; return the exit code."""
    from detrun.errors import ExitCode

    findings = profile_tensorflow_script(target, steps, include_all=show_all)
    blocking = [f for f in findings if blocks_reproducibility(f)]
    if not quiet:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="TensorFlow ops that can change bits (GPU behaviour from detrun/profiler/kb/tensorflow.json)")
        for column in ("op", "count", "call site", "nondeterministic on GPU", "under op determinism"):
            table.add_column(column, overflow="fold")
        for f in findings:
            site = f["call_site"]
            under = ("raises" if f.get("raised_here") or f.get("raises_with_op_determinism")
                     else "deterministic" if f.get("op_determinism_fixes") else "unknown")
            table.add_row(f["op"], str(f["count"]), f"{os.path.basename(site['file'])}:{site['line']} ({site['function']})",
                          {True: "yes", False: "no", None: "unknown"}[f.get("nondeterministic_gpu")], under)
        Console(stderr=True).print(table)
    print(f"detrun: profile: {len(findings)} flagged TensorFlow ops; {len(blocking)} still change bits or raise "
          "under op determinism", file=sys.stderr)
    if json_path:
        document = {"schema_version": 1, "framework": "tensorflow", "ops": findings}
        temporary = f"{json_path}.tmp"
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=2)
        os.replace(temporary, json_path)
    if fail_on == "nondeterministic" and blocking:
        return int(ExitCode.NONDETERMINISTIC)
    return 0
