"""Run a script under the profiler: capture its ops for K optimizer steps, then report."""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, TextIO

from detrun.engine.step_clock import StepClock
from detrun.errors import DetrunError
from detrun.profiler.step_limit import StepLimit, StepLimitReached
from detrun.runner import Outcome, Runner, Target

if TYPE_CHECKING:
    from detrun.profiler.report import Report


@dataclasses.dataclass(frozen=True)
class ProfileOptions:
    """What `detrun profile` was asked to do."""

    target: Target
    steps: int = 5  # stop after this many optimizer steps; 0 runs the script to its end
    json_path: str | None = None
    fail_on: str | None = None  # "nondeterministic" or None
    empirical: bool = True
    device: str = "cuda"  # "cuda": judge every op by CUDA behaviour; "auto": by the device it ran on
    quiet: bool = False
    show_all: bool = False


class StepCounter:
    """Count optimizer steps (all optimizers) on a step clock of its own; stop the script at the limit."""

    def __init__(self, limit: int, on_step: Callable[[], None]) -> None:
        # Bookkeeping errors are ignored: the profile must not disturb the script it watches.
        self._clock = StepClock(lambda where, exc: None)
        self._limit = StepLimit(self._clock, limit, on_step)

    @property
    def steps(self) -> int:
        """Return the number of optimizer steps completed."""
        return self._clock.step

    def __enter__(self) -> "StepCounter":
        import torch

        self._clock.attach_torch(torch)
        return self

    def __exit__(self, *exc: object) -> None:
        self._clock.detach_torch()


@dataclasses.dataclass
class ProfileResult:
    """How the profiled script ended and what the profile found."""

    outcome: Outcome
    stopped_by_step_limit: bool
    report: Report

    @property
    def exit_code(self) -> int | None:
        """Return detrun's exit code, or None when the script's own ending must be reproduced."""
        from detrun.errors import ExitCode

        script_failed = not self.stopped_by_step_limit and (
            self.outcome.exit_status != 0 or self.outcome.keyboard_interrupt)
        if script_failed:
            return None
        if self.report.fail_on_triggered:
            return int(ExitCode.NONDETERMINISTIC)
        return 0 if self.stopped_by_step_limit else None


def json_destination(options: ProfileOptions) -> str | None:
    """Return the absolute --json path; fail now on a missing directory rather than after a long run.

    Resolved before the script runs, because the script may chdir.
    """
    json_path = os.path.abspath(options.json_path) if options.json_path else None
    if json_path and not os.path.isdir(os.path.dirname(json_path)):
        raise DetrunError(f"cannot write {options.json_path}: no such directory {os.path.dirname(json_path)}")
    return json_path


def _import_torch() -> Any:
    """Import torch or explain in one line how to install it."""
    try:
        import torch
    except ImportError:
        raise DetrunError("detrun profile needs torch; install it with: pip install 'detrun[torch]'") from None
    return torch


def run_profile(options: ProfileOptions, stream: TextIO | None = None) -> ProfileResult:
    """Run the target under the op capture and print (and optionally write) the report."""
    from detrun.profiler.report import say

    stream = stream or sys.stderr
    runner = Runner(options.target)  # a missing script fails here, before torch is imported
    start_dir = os.getcwd()
    json_path = json_destination(options)
    torch = _import_torch()
    from detrun.profiler import kernel_names, report
    from detrun.profiler.capture import OpCapture, hide_capture_frames
    from detrun.profiler.kb import KnowledgeBase, KnowledgeBaseError

    try:
        kb = KnowledgeBase.load(torch.__version__)
    except KnowledgeBaseError as exc:
        raise DetrunError(str(exc)) from None

    def warn(message: str) -> None:
        """Print a detrun warning line."""
        say(stream, f"warning: {message}")

    def hook_error(message: str) -> None:
        """Report the first failure inside the capture hook."""
        warn(f"the profiler's hook failed; the script runs on unaffected: {message}")

    if not options.quiet:
        report.announce(stream, report.TORCH, options.target.display, options.steps, options.device,
                        options.empirical)

    capture = OpCapture(kb, kb_device="cuda" if options.device == "cuda" else None,
                        run_empirical=options.empirical, keep_kernel_probes=True,
                        on_hook_error=hook_error)
    counter = StepCounter(options.steps, capture.on_optimizer_step)
    started = time.perf_counter()
    with counter:
        capture.__enter__()
        try:
            outcome = runner.run(on_exception=hide_capture_frames)
        finally:
            try:
                capture.__exit__(None, None, None)
            except Exception as exc:  # noqa: BLE001 - the script left the mode stack unbalanced
                warn(f"could not pop the profiler's dispatch mode: {type(exc).__name__}: {exc}")
    elapsed = time.perf_counter() - started
    capture.enabled = False
    stopped = isinstance(outcome.system_exit, StepLimitReached)

    records = list(capture.records.values())
    # Only now touch CUDA: initialising it before the script could change what the script sees
    # (CUDA_VISIBLE_DEVICES or CUBLAS_WORKSPACE_CONFIG set by the script itself, for instance).
    used_cuda = any(r.device == "cuda" for r in records)
    gpu = torch.cuda.get_device_name() if used_cuda and kernel_names.cuda_usable() else None
    kernel_count = kernel_names.capture_kernels(records, warn) if gpu is not None else 0

    ran_on = sorted({r.device for r in records}) or ["cpu"]
    findings = report.build_findings(records, "cuda" if options.device == "cuda" else None)
    result_report = report.Report(
        findings=findings,
        target={"name": options.target.name, "args": list(options.target.args),
                "module": options.target.is_module, "path": runner.path},
        reported_device=options.device,
        ran_on=ran_on,
        steps={"limit": options.steps, "completed": counter.steps, "stopped_by_limit": stopped},
        exit_status=0 if stopped else outcome.exit_status,
        empirical={"enabled": options.empirical, "signatures_checked": capture.checks_run,
                   "seconds": round(capture.check_seconds, 4)},
        kb={"file": kb.path, "torch_version": kb.framework_version, "framework_version": kb.framework_version,
            "rules_in_range": len(kb.rules)},
        hook_errors=list(capture.hook_errors),
        torch_version=torch.__version__,
        gpu=gpu,
        seconds=elapsed,
    )
    result_report.fail_on_triggered = (options.fail_on == "nondeterministic"
                                       and result_report.fail_on_nondeterministic)
    notes = []
    if options.empirical:
        notes.append(f"empirical check: {capture.checks_run} op signatures re-run twice in "
                     f"{capture.check_seconds:.2f} s")
    if kernel_count:
        notes.append(f"CUDA kernels listed for {kernel_count} flagged ops")
    report.publish(result_report, stream, quiet=options.quiet, show_all=options.show_all, cwd=start_dir,
                   notes=notes, json_path=json_path, json_shown=options.json_path)
    return ProfileResult(outcome, stopped, result_report)
