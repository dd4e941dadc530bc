"""Start the child interpreter that runs the script under a session, and finish up after it.

`PYTHONHASHSEED` is only read when an interpreter starts, so the script always runs in a child
that detrun launches with a chosen (and recorded) hash seed and, on replay, the recorded thread
environment. The parent checks its inputs, forwards termination signals, and if the child dies
without closing its trace it salvages the flushed prefix into a trace marked incomplete.
"""
from __future__ import annotations

import datetime
import json
import os
import secrets
import signal
import subprocess
import sys
from typing import Any

from detrun import __version__
from detrun.env import diff as env_diff
from detrun.env.fingerprint import THREAD_ENV_NAMES, fingerprint
from detrun.errors import ArgsChanged, OutputExists, PolicyError, ScriptChanged, ScriptNotFound, TraceError
from detrun.runner import Target, resolve
from detrun.trace import read_header
from detrun.trace.salvage import salvage

CHILD_CONFIG_VAR = "DETRUN_CHILD_CONFIG"


def _temporary_path(output: str) -> str:
    """Return a hidden temporary name beside the output, so the final rename is atomic."""
    directory, name = os.path.split(os.path.abspath(output))
    return os.path.join(directory, f".{name}.{os.getpid()}.partial")


def _check_output(output: str, force: bool) -> None:
    if os.path.exists(output) and not force:
        raise OutputExists(f"{output} exists; pass --force to overwrite it")
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise OutputExists(f"cannot write {output}: no such directory {directory}")
    if not os.access(directory, os.W_OK):
        raise OutputExists(f"cannot write {output}: {directory} is not writable")


def _policy_ops(policy: str, profile_path: str | None) -> list[str]:
    """Return the ops a minimal policy patches, read from a profile; refuse inconsistent options."""
    if policy != "minimal":
        if profile_path is not None:
            raise PolicyError("--from-profile goes with --policy minimal")
        return []
    if profile_path is None:
        raise PolicyError("--policy minimal needs --from-profile PROFILE.json (written by `detrun profile --json`)")
    from detrun.patches.patch_policy import load_profile_ops

    try:
        return sorted(load_profile_ops(profile_path))
    except (OSError, ValueError) as exc:
        raise PolicyError(f"cannot read the profile {profile_path}: {exc}") from None


def record(target: Target, output: str, *, force: bool = False, quiet: bool = False,
           digest_every: int = 1, policy: str = "strict", profile_path: str | None = None,
           kernel_steps: int = 2) -> int:
    """Record one run of the target into `output`; return the script's exit status."""
    resolved = resolve(target)
    _check_output(output, force)
    policy_ops = _policy_ops(policy, profile_path)
    user_hashseed = os.environ.get("PYTHONHASHSEED")
    # 0 would disable hash randomisation, which is itself a different program: pick from 1..2**32-1.
    hashseed = user_hashseed if user_hashseed not in (None, "", "random") else str(secrets.randbelow(2**32 - 1) + 1)
    header = {
        "detrun_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "env": fingerprint(os.path.dirname(resolved.path)),
        "script": {"name": target.name, "module": target.is_module, "path": resolved.path,
                   "sha256": resolved.sha256},
        "argv": list(target.args),
        "cwd": os.getcwd(),
        "settings": {
            "hashseed": hashseed,
            "hashseed_from_user": user_hashseed is not None,
            "thread_env": {name: os.environ.get(name) for name in THREAD_ENV_NAMES},
            "digest_every": digest_every,
            "policy": policy,
            "policy_ops": policy_ops,
            "tf_op_determinism": policy != "off",
            "kernel_steps": kernel_steps,  # CUDA kernel names are captured for this many optimizer steps
        },
    }
    temporary = _temporary_path(output)
    config = {"mode": "record", "target": _target_data(target), "header": header, "trace_tmp": temporary,
              "trace_path": output, "quiet": quiet, "settings": header["settings"]}
    status = _run_child(config, {"PYTHONHASHSEED": hashseed})
    if os.path.exists(temporary):
        _salvage(temporary, output, status, quiet)
    return status


def replay(trace_path: str, target: Target | None, *, allow_changed_script: bool = False,
           allow_changed_args: bool = False, strict: bool = False, quiet: bool = False,
           pin_threads: bool = True, verbose: bool = False, report_json: str | None = None,
           ignore_output: tuple[str, ...] = ()) -> int:
    """Replay a trace; return the script's non-zero exit status, else the verdict's exit code."""
    header = read_header(trace_path)
    recorded = header.get("script", {})
    recorded_args = list(header.get("argv", []))
    if target is None:
        target = Target(recorded.get("name", ""), tuple(recorded_args), bool(recorded.get("module")))
    elif not target.args and recorded_args:
        target = Target(target.name, tuple(recorded_args), target.is_module)
    elif list(target.args) != recorded_args and not allow_changed_args:
        raise ArgsChanged(f"arguments {list(target.args)} differ from the recorded {recorded_args}; "
                          "omit them to use the recorded ones, or pass --allow-changed-args")
    try:
        resolved = resolve(target)
    except ScriptNotFound as exc:
        if header.get("cwd") and os.path.abspath(header["cwd"]) != os.getcwd():
            raise ScriptNotFound(f"{exc} (the run was recorded in {header['cwd']}: replay from there, "
                                 "or give the script's path)") from None
        raise
    if resolved.sha256 != recorded.get("sha256") and not allow_changed_script:
        raise ScriptChanged(f"{target.name} changed since it was recorded (sha256 {resolved.sha256[:12]}… vs "
                            f"recorded {str(recorded.get('sha256'))[:12]}…); pass --allow-changed-script to replay anyway")
    settings = {**header.get("settings", {}), "pin_threads": pin_threads}
    child_env: dict[str, str | None] = {"PYTHONHASHSEED": str(settings.get("hashseed", "0"))}
    if pin_threads:
        # Pin the thread environment the recording ran with (absent there means absent here).
        child_env.update(settings.get("thread_env", {}))
    differences = env_diff.classify(env_diff.diff(header.get("env", {}), fingerprint(os.path.dirname(resolved.path))),
                               threads_pinned=pin_threads)
    # The differences that can change bits go to the session, which names the first as the likely
    # cause if the replay diverges.
    config = {"mode": "replay", "target": _target_data(target), "trace_path": os.path.abspath(trace_path),
              "strict": strict, "quiet": quiet, "settings": settings, "causes": env_diff.causes(differences),
              # The user's options, never the trace's: a trace chooses no path detrun writes to.
              "verbose": verbose, "report_json": os.path.abspath(report_json) if report_json else None,
              "ignore_output": list(ignore_output)}
    if not quiet:
        _print_env_diff(differences)
    return _run_child(config, child_env)


def _print_env_diff(differences: list[env_diff.Difference]) -> None:
    """Report environment differences from the recording: those that can change bits one per line."""
    for line in env_diff.report_lines(differences):
        print(f"detrun: {line}", file=sys.stderr)


def _target_data(target: Target) -> dict[str, Any]:
    return {"name": target.name, "args": list(target.args), "module": target.is_module}


def _run_child(config: dict[str, Any], overrides: dict[str, str | None]) -> int:
    """Run the child interpreter with the session config; return its exit status as a shell sees it."""
    child_env = dict(os.environ)
    for key, value in overrides.items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value
    child_env[CHILD_CONFIG_VAR] = json.dumps(config)
    process = subprocess.Popen([sys.executable, "-m", "detrun._child"], env=child_env)

    def forward(signum: int, _frame: Any) -> None:
        process.send_signal(signum)

    # Ctrl-C reaches the whole foreground process group, so the child already has it; the parent
    # only has to outlive the child to finish the trace. kill/SIGTERM is aimed at us: pass it on.
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
                signal.SIGHUP: signal.signal(signal.SIGHUP, forward)}
    try:
        status = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status


def _salvage(temporary: str, output: str, status: int, quiet: bool) -> None:
    """Turn a dead child's partial trace into a readable one that says it is incomplete."""
    if status < 0:
        reason = f"killed by {signal.Signals(-status).name}"
    else:
        reason = f"exited with status {status} before detrun could finish the trace"
    steps = salvage(temporary, output, reason, status)
    if steps is None:
        print("detrun: the run died before its trace had a header; no trace was written", file=sys.stderr)
    elif not quiet:
        print(f"detrun: the run was {reason}; the incomplete trace ({steps} steps) is in {output}",
              file=sys.stderr)


def exit_like(status: int) -> None:
    """Exit the parent with the child's status; re-raise a fatal signal so the shell sees the same."""
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    sys.exit(status)


__all__ = ["record", "replay", "exit_like", "TraceError", "CHILD_CONFIG_VAR"]
