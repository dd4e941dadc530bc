"""The TensorFlow op capture: the child side of `detrun profile` for a TensorFlow script.

`python -m detrun.profiler.tf_capture --worker OUT.json [--steps K] [--no-determinism] [-m] -- SCRIPT ARGS`
runs the script with `tf.config.experimental.enable_op_determinism()` on (and detrun's TensorFlow
source installed, so unseeded random ops and `Generator.from_non_deterministic_state()` still run)
and captures every op it executes eagerly or builds into a graph (`tf.function`, `model.fit`,
`tf.data` functions) through TensorFlow's op callbacks. Capturing graph ops when they are built,
before they run, is what lets one run list them all instead of stopping at the first one that
raises; an op that does raise under op determinism is noted with its line. Each op type gets the
first line of user code behind it: for a gradient op, the forward line that created the op it
differentiates (from the graph op's creation traceback, or for eager code from the call site noted
when the forward op ran). The steps are counted by the shared step limit on the session's step
clock, which the TensorFlow step check ticks. The parent (`tf_profile`) reads OUT.json.
"""
from __future__ import annotations

import json
import os
import re
import sys
import sysconfig
import threading
from collections import Counter
from typing import Any, Iterable

from detrun.profiler.step_limit import StepLimit, StepLimitReached
from detrun.runner import Target

_DETRUN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MAX_SITES = 16
_MAX_NAMES = 8
_MAX_EAGER_SITES = 200_000


def _new_slot() -> dict[str, Any]:
    """Return the empty bookkeeping of one op type."""
    return {"count": 0, "sites": Counter(), "phases": set(), "names": [], "dtypes": set()}


def _user_prefixes() -> tuple[str, ...]:
    """Return the directories whose frames are never the user's call site."""
    prefixes = {_DETRUN_DIR}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            prefixes.add(os.path.abspath(path))
    return tuple(p + os.sep for p in sorted(prefixes))


class TFOpCapture:
    """Count every op type TF runs eagerly or builds into a graph, with the user line behind it."""

    def __init__(self) -> None:
        self.ops: dict[str, dict[str, Any]] = {}
        self._internal = _user_prefixes()
        self._eager_sites: dict[tuple[str, int, int], tuple[str, int, str]] = {}
        self._lock = threading.Lock()
        self.step_limit: StepLimit | None = None  # a stop deferred from another thread is raised at the next op
        self.ran_on: set[str] = set()
        self.source_mapper_stacks: Any = None  # tensorflow.python.util.tf_stack's, once TF is imported

    def _is_user(self, filename: str) -> bool:
        """Say whether a frame of this file is the user's code."""
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
                slot = self.ops.setdefault(op_type, _new_slot())
                slot["count"] += 1
                slot["phases"].add(phase)
                if len(slot["dtypes"]) < _MAX_NAMES:
                    for tensor in inputs or ():
                        dtype = getattr(getattr(tensor, "dtype", None), "name", None)
                        if dtype:
                            slot["dtypes"].add(dtype)
                if graph is None:
                    for tensor in outputs or ():
                        # Eager outputs say where the op ran: '/job:localhost/.../device:GPU:0'.
                        device = str(getattr(tensor, "device", "") or "")
                        if device:
                            self.ran_on.add("cuda" if ":GPU:" in device.upper() else "cpu")
                        break
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
        if self.step_limit is not None:
            self.step_limit.stop_if_pending()

    def to_json(self) -> dict[str, Any]:
        """Return what was captured, as plain data for the parent."""
        return {op: {"count": slot["count"], "phases": sorted(slot["phases"]), "names": slot["names"],
                     "dtypes": sorted(slot["dtypes"]),
                     "sites": [{"file": f, "line": l, "function": fn, "count": c}
                               for (f, l, fn), c in slot["sites"].most_common(_MAX_SITES)]}
                for op, slot in self.ops.items()}


def _determinism_op(exc: BaseException, capture: TFOpCapture) -> str | None:
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
    """Yield the entries of a traceback, outermost first."""
    while tb is not None:
        yield tb
        tb = tb.tb_next



def _worker(out_path: str, target: Target, steps: int, determinism: bool) -> None:
    """Run the target under the capture and write what it saw to out_path; exit as the script did."""
    from detrun.engine.session import Session
    from detrun.engine.sources.tf_runtime import TensorFlowSource
    from detrun.engine.sources.tf_steps import TFStepVerifier
    from detrun.runner import Runner

    capture = TFOpCapture()
    raised: list[dict[str, str]] = []

    class ProfileSession(Session):
        """A record-mode session that keeps nothing: the step check only ticks its clock."""

        def emit(self, kind: str, payload: Any) -> None:
            return None

    session = ProfileSession("record", quiet=True, settings={"tf_op_determinism": determinism,
                                                              "digest_every": 1 << 62})
    capture.step_limit = StepLimit(session.clock, steps, defer_off_main_thread=True)

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
                slot = capture.ops.setdefault(op, _new_slot())
                if not slot["sites"]:
                    slot["count"] += 1
                    slot["phases"].add("forward")
                    slot["sites"][(code.co_filename, line, code.co_name)] += 1
                break

    outcome = Runner(target).run(on_exception=on_exception)
    stopped = isinstance(outcome.system_exit, StepLimitReached)
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump({"ops": capture.to_json(), "raised": raised, "steps": session.steps,
                   "stopped_by_limit": stopped, "determinism": determinism, "determinism_error": bool(raised),
                   "ran_on": sorted(capture.ran_on), "gpu": _gpu_name()}, handle)
    session.uninstall()
    if stopped:
        sys.exit(0)
    outcome.finish()


def _gpu_name() -> str | None:
    """Return the name of the GPU TensorFlow used, if the script imported it and it has one."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return None
    try:
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return None
        return str(tf.config.experimental.get_device_details(gpus[0]).get("device_name") or gpus[0].name)
    except Exception:  # noqa: BLE001 - a broken driver reads as no GPU
        return None


def main(argv: list[str] | None = None) -> None:
    """Run the worker: `python -m detrun.profiler.tf_capture --worker OUT [--steps K] [-m] -- SCRIPT [ARGS...]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m detrun.profiler.tf_capture",
                                     description="The child side of `detrun profile` for TensorFlow scripts.")
    parser.add_argument("--worker", required=True, help="where to write what the capture saw (JSON)")
    parser.add_argument("--steps", type=int, default=0, help="stop after K training steps (0: run to the end)")
    parser.add_argument("-m", dest="module", action="store_true", help="SCRIPT is a module name")
    parser.add_argument("--no-determinism", action="store_true", help="run without op determinism")
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    args = options.args[1:] if options.args[:1] == ["--"] else options.args
    _worker(options.worker, Target(options.script, tuple(args), options.module), options.steps,
            not options.no_determinism)


if __name__ == "__main__":
    main()
