"""What a replay takes from a trace, validated: a trace may come from a stranger.

Only a hash seed that is an integer, thread-count variables from a fixed list with integer values,
and the settings record writes. A module the trace names never runs, nor a script outside the
current directory; the exact command is shown to the user with control characters escaped.
"""
from __future__ import annotations

import os
import re
import shlex
from typing import Any

from detrun.env.fingerprint import THREAD_ENV_NAMES
from detrun.errors import ScriptChanged, ScriptNotFound, TargetRefused, TraceError
from detrun.runner import ResolvedTarget, Target, resolve


# The settings record writes into the header; replay passes on these keys and no others, so a trace
# cannot smuggle in a setting detrun's own code would trust (a path, say).
RECORDED_SETTINGS = ("hashseed", "hashseed_from_user", "thread_env", "digest_every", "digest_last_step", "policy", "policy_ops",
                     "tf_op_determinism", "kernel_steps", "op_digests", "op_digest_every", "nccl_env")

# Values replay accepts for the thread-count variables: a small non-negative integer (OpenMP also
# takes a per-nesting-level list), or empty. Anything else could be a path or code.
_THREAD_VALUE = re.compile(r"(?:[0-9]{1,6})?")

_OMP_THREAD_VALUE = re.compile(r"[0-9]{1,6}(?:,[0-9]{1,6}){0,7}")

_HASHSEED = re.compile(r"[0-9]{1,10}")

def python_command(target: Target) -> list[str]:
    """Return the `python ...` command line the child runs the target as."""
    return ["python", *(["-m"] if target.is_module else []), target.name, *target.args]

def is_arg_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(a, str) and "\0" not in a for a in value)

def as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}

def validated_hashseed(value: object, trace_path: str) -> str:
    """Return the recorded hash seed as text, or refuse it: Python aborts on a bad PYTHONHASHSEED."""
    if isinstance(value, str) and _HASHSEED.fullmatch(value) and int(value) < 2**32:
        return value
    raise TraceError(f"{trace_path} has an invalid hash seed {_shown(value)} (an integer 0..4294967295 is expected)")

def validated_thread_env(value: object) -> tuple[dict[str, str | None], list[str]]:
    """Split the recorded thread environment into the settings to pin and descriptions of refused ones.

    Only the names in THREAD_ENV_NAMES, with None (unset) or an integer value, are pinned: any other
    variable (PYTHONPATH, LD_PRELOAD, ...) would let a trace run code in the replay.
    """
    if value is None:
        return {}, []
    if not isinstance(value, dict):
        return {}, [f"thread_env {_shown(value)}"]
    accepted: dict[str, str | None] = {}
    refused: list[str] = []
    for name, setting in value.items():
        pattern = _OMP_THREAD_VALUE if name == "OMP_NUM_THREADS" else _THREAD_VALUE
        if name in THREAD_ENV_NAMES and (setting is None or (isinstance(setting, str) and pattern.fullmatch(setting))):
            accepted[name] = setting
        else:
            refused.append(f"{_shown(name)}={_shown(setting)}")
    return accepted, refused

def _shown(value: object, limit: int = 60) -> str:
    """Return a value from a trace as one short printable token (it may hold anything)."""
    text = ascii(value)
    return text if len(text) <= limit else text[:limit] + "…"

def shell_words(words: list[str]) -> str:
    """Return words as a shell command line a user can paste; control characters stay escaped."""
    quoted = []
    for word in words:
        if word.isprintable():
            quoted.append(shlex.quote(word))
        else:  # bash's $'...' quoting shows \x1b and \n instead of acting on them
            quoted.append("$'" + word.encode("unicode_escape").decode("ascii").replace("'", "\\'") + "'")
    return " ".join(quoted)

def resolve_here(target: Target, recorded_cwd: object) -> ResolvedTarget:
    """Resolve a target, pointing at the recording's directory when the script is not found here."""
    try:
        return resolve(target)
    except ScriptNotFound as exc:
        if isinstance(recorded_cwd, str) and os.path.abspath(recorded_cwd) != os.getcwd():
            raise ScriptNotFound(f"{exc} (the run was recorded in {_shown(recorded_cwd, 200)}: replay from there, "
                                 "or give the script's path)") from None
        raise

def recorded_script(trace_path: str, recorded: dict[str, Any], args: list[str], recorded_cwd: object) -> ResolvedTarget:
    """Return the recorded script to replay when the user named none, if it is safe to run.

    That is a script file (never a module: the trace could name any module in the standard library
    with arguments that run code) under the current directory, whose sha256 is the recorded one.
    """
    name = recorded.get("name")
    if not isinstance(name, str) or not name or "\0" in name:
        raise TraceError(f"{trace_path} is corrupt (the recorded script name is malformed)")
    if recorded.get("module"):
        command = shell_words(["detrun", "replay", "-m", trace_path, name, *args])
        raise TargetRefused(f"the trace ran a module, and replay runs a module only when you name it; "
                            f"to run it, type: {command}")
    naming = shell_words(["detrun", "replay", trace_path, "SCRIPT"])
    here = os.path.realpath(os.getcwd())
    if os.path.commonpath([os.path.realpath(name), here]) != here:
        raise TargetRefused(f"the recorded script {shell_words([name])} is not under the current directory; "
                            f"name the script to replay: {naming}")
    resolved = resolve_here(Target(name, tuple(args)), recorded_cwd)
    if os.path.commonpath([os.path.realpath(resolved.path), here]) != here:
        raise TargetRefused(f"the recorded script {shell_words([name])} resolves outside the current directory; "
                            f"name the script to replay: {naming}")
    if resolved.sha256 != recorded.get("sha256"):
        raise ScriptChanged(f"{name} changed since it was recorded (sha256 {resolved.sha256[:12]}… vs recorded "
                            f"{_shown(recorded.get('sha256'), 12)}…); to replay it anyway, type: "
                            + shell_words(["detrun", "replay", "--allow-changed-script", trace_path, name]))
    return resolved
