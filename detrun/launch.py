"""Start the child interpreter that runs the script under a session, and finish up after it.

`PYTHONHASHSEED` is only read when an interpreter starts, so the script always runs in a child
that detrun launches with a chosen (and recorded) hash seed and, on replay, the recorded thread
environment. The parent checks its inputs, forwards termination signals, and if the child dies
without closing its trace it salvages the flushed prefix into a trace marked incomplete.

A trace may come from a stranger, so replay takes from it only what it validates here: a hash seed
that is an integer, thread-count variables from a fixed list with integer values, and the settings
record writes. It never runs a module the trace names, nor a script outside the current directory,
and no path detrun writes to comes from a trace: scratch files live in a private directory made
here for each run.
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime
import fcntl
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any, Callable, Iterator, NoReturn

from detrun import __version__
from detrun.env import diff as env_diff
from detrun.env.fingerprint import THREAD_ENV_NAMES, fingerprint
from detrun.errors import (ArgsChanged, OutputExists, PolicyError, ScriptChanged, ScriptNotFound, TargetRefused,
                           TraceError)
from detrun.runner import ResolvedTarget, Target, resolve
from detrun.trace import read_header
from detrun.trace.salvage import salvage

CHILD_CONFIG_VAR = "DETRUN_CHILD_CONFIG"

# The settings record writes into the header; replay passes on these keys and no others, so a trace
# cannot smuggle in a setting detrun's own code would trust (a path, say).
RECORDED_SETTINGS = ("hashseed", "hashseed_from_user", "thread_env", "digest_every", "policy", "policy_ops",
                     "tf_op_determinism", "kernel_steps")
# Values replay accepts for the thread-count variables: a small non-negative integer (OpenMP also
# takes a per-nesting-level list), or empty. Anything else could be a path or code.
_THREAD_VALUE = re.compile(r"(?:[0-9]{1,6})?")
_OMP_THREAD_VALUE = re.compile(r"[0-9]{1,6}(?:,[0-9]{1,6}){0,7}")
_HASHSEED = re.compile(r"[0-9]{1,10}")
_PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def _scratch_directory() -> Iterator[str]:
    """Create this run's private scratch directory (mode 0700, a fresh random name in the temp dir).

    The recording's temporary trace and the DataLoader workers' segments and reports live here, not
    beside the output: a script that lists its own directory must not see them (it would record
    them, and every replay would diverge), and no trace may choose where detrun writes. This process
    holds a lock on it while it runs; the directory is removed at the end.
    """
    _sweep_stale_scratch()
    path = tempfile.mkdtemp(prefix=f"detrun-{os.getpid()}-")
    lock = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(lock)


def _sweep_stale_scratch() -> None:
    """Remove scratch directories a killed detrun left behind (`kill -9` leaves nobody to do it).

    Only ours, only real directories, and only when both say the owner is gone: its pid does not
    exist and its lock is free. The lock covers a pid from another pid namespace sharing /tmp; the
    pid covers the instant between an owner's mkdtemp and its flock.
    """
    directory = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(directory) if re.fullmatch(r"detrun-[0-9]+-[A-Za-z0-9_]+", n)]
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        try:
            os.kill(int(name.split("-")[1]), 0)
            continue  # the owner lives
        except ProcessLookupError:
            pass
        except (OSError, ValueError, OverflowError):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_uid != os.getuid():
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue  # locked: a live run in another pid namespace
        finally:
            os.close(fd)


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
    assert tuple(header["settings"]) == RECORDED_SETTINGS, "replay passes on only RECORDED_SETTINGS"
    with _scratch_directory() as scratch:
        temporary = os.path.join(scratch, "trace.partial")
        config = {"mode": "record", "target": _target_data(target), "header": header, "trace_tmp": temporary,
                  "trace_path": output, "force": force, "quiet": quiet, "settings": header["settings"],
                  "scratch_dir": scratch}
        status = _run_child(config, {"PYTHONHASHSEED": hashseed})
        if os.path.exists(temporary):  # the child died before publishing its trace
            _salvage(temporary, output, status, quiet, force)
    return status


def replay(trace_path: str, target: Target | None, *, allow_changed_script: bool = False,
           allow_changed_args: bool = False, strict: bool = False, quiet: bool = False,
           pin_threads: bool = True, verbose: bool = False, report_json: str | None = None,
           ignore_output: tuple[str, ...] = ()) -> int:
    """Replay a trace; return the script's non-zero exit status, else the verdict's exit code."""
    header = read_header(trace_path)
    recorded = header.get("script")
    recorded_args = header.get("argv", [])
    if not isinstance(recorded, dict) or not _is_arg_list(recorded_args):
        raise TraceError(f"{trace_path} is corrupt (the recorded script or argv is malformed)")
    recorded_args = list(recorded_args)
    trace_settings = header.get("settings")
    if not isinstance(trace_settings, dict):
        raise TraceError(f"{trace_path} is corrupt (its settings are not a map)")
    hashseed = _validated_hashseed(trace_settings.get("hashseed"), trace_path)
    thread_env, refused = _validated_thread_env(trace_settings.get("thread_env"))
    if target is None:
        resolved = _recorded_script(trace_path, recorded, recorded_args, header.get("cwd"))
        target = resolved.target
    else:
        if not target.args and recorded_args:
            target = Target(target.name, tuple(recorded_args), target.is_module)
        elif list(target.args) != recorded_args and not allow_changed_args:
            raise ArgsChanged(f"arguments {list(target.args)} differ from the recorded {recorded_args}; "
                              "omit them to use the recorded ones, or pass --allow-changed-args")
        resolved = _resolve_here(target, header.get("cwd"))
        if resolved.sha256 != recorded.get("sha256") and not allow_changed_script:
            raise ScriptChanged(f"{target.name} changed since it was recorded (sha256 {resolved.sha256[:12]}… vs "
                                f"recorded {str(recorded.get('sha256'))[:12]}…); pass --allow-changed-script to "
                                "replay anyway")
    settings: dict[str, Any] = {key: trace_settings[key] for key in RECORDED_SETTINGS if key in trace_settings}
    settings.update(hashseed=hashseed, thread_env=thread_env, pin_threads=pin_threads)
    child_env: dict[str, str | None] = {"PYTHONHASHSEED": hashseed}
    if pin_threads:
        # Pin the thread environment the recording ran with (absent there means absent here).
        child_env.update(thread_env)
        if refused:
            print(f"detrun: warning: ignored {len(refused)} environment setting(s) in the trace that detrun never "
                  f"sets (only thread-count variables with integer values): {', '.join(refused)}", file=sys.stderr)
    differences = env_diff.classify(env_diff.diff(_as_dict(header.get("env")),
                                                  fingerprint(os.path.dirname(resolved.path))),
                                    threads_pinned=pin_threads)
    if not quiet:
        _print_env_diff(differences)
        print(f"detrun: replaying: {_shell_words(_python_command(target))}",
              file=sys.stderr)
    with _scratch_directory() as scratch:
        # The differences that can change bits go to the session, which names the first as the likely
        # cause if the replay diverges.
        config = {"mode": "replay", "target": _target_data(target), "trace_path": os.path.abspath(trace_path),
                  "strict": strict, "quiet": quiet, "settings": settings, "causes": env_diff.causes(differences),
                  "scratch_dir": scratch,
                  # The user's options, never the trace's: a trace chooses no path detrun writes to.
                  "verbose": verbose, "report_json": os.path.abspath(report_json) if report_json else None,
                  "ignore_output": list(ignore_output)}
        return _run_child(config, child_env)


def _python_command(target: Target) -> list[str]:
    """Return the `python ...` command line the child runs the target as."""
    return ["python", *(["-m"] if target.is_module else []), target.name, *target.args]


def _is_arg_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(a, str) and "\0" not in a for a in value)


def _as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _validated_hashseed(value: object, trace_path: str) -> str:
    """Return the recorded hash seed as text, or refuse it: Python aborts on a bad PYTHONHASHSEED."""
    if isinstance(value, str) and _HASHSEED.fullmatch(value) and int(value) < 2**32:
        return value
    raise TraceError(f"{trace_path} has an invalid hash seed {_shown(value)} (an integer 0..4294967295 is expected)")


def _validated_thread_env(value: object) -> tuple[dict[str, str | None], list[str]]:
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


def _shell_words(words: list[str]) -> str:
    """Return words as a shell command line a user can paste; control characters stay escaped."""
    quoted = []
    for word in words:
        if word.isprintable():
            quoted.append(shlex.quote(word))
        else:  # bash's $'...' quoting shows \x1b and \n instead of acting on them
            quoted.append("$'" + word.encode("unicode_escape").decode("ascii").replace("'", "\\'") + "'")
    return " ".join(quoted)


def _resolve_here(target: Target, recorded_cwd: object) -> ResolvedTarget:
    """Resolve a target, pointing at the recording's directory when the script is not found here."""
    try:
        return resolve(target)
    except ScriptNotFound as exc:
        if isinstance(recorded_cwd, str) and os.path.abspath(recorded_cwd) != os.getcwd():
            raise ScriptNotFound(f"{exc} (the run was recorded in {_shown(recorded_cwd, 200)}: replay from there, "
                                 "or give the script's path)") from None
        raise


def _recorded_script(trace_path: str, recorded: dict[str, Any], args: list[str], recorded_cwd: object) -> ResolvedTarget:
    """Return the recorded script to replay when the user named none, if it is safe to run.

    That is a script file (never a module: the trace could name any module in the standard library
    with arguments that run code) under the current directory, whose sha256 is the recorded one.
    """
    name = recorded.get("name")
    if not isinstance(name, str) or not name or "\0" in name:
        raise TraceError(f"{trace_path} is corrupt (the recorded script name is malformed)")
    if recorded.get("module"):
        command = _shell_words(["detrun", "replay", "-m", trace_path, name, *args])
        raise TargetRefused(f"the trace ran a module, and replay runs a module only when you name it; "
                            f"to run it, type: {command}")
    naming = _shell_words(["detrun", "replay", trace_path, "SCRIPT"])
    here = os.path.realpath(os.getcwd())
    if os.path.commonpath([os.path.realpath(name), here]) != here:
        raise TargetRefused(f"the recorded script {_shell_words([name])} is not under the current directory; "
                            f"name the script to replay: {naming}")
    resolved = _resolve_here(Target(name, tuple(args)), recorded_cwd)
    if os.path.commonpath([os.path.realpath(resolved.path), here]) != here:
        raise TargetRefused(f"the recorded script {_shell_words([name])} resolves outside the current directory; "
                            f"name the script to replay: {naming}")
    if resolved.sha256 != recorded.get("sha256"):
        raise ScriptChanged(f"{name} changed since it was recorded (sha256 {resolved.sha256[:12]}… vs recorded "
                            f"{_shown(recorded.get('sha256'), 12)}…); to replay it anyway, type: "
                            + _shell_words(["detrun", "replay", "--allow-changed-script", trace_path, name]))
    return resolved


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
    preexec = _die_with_parent_linux()
    watch_fds: tuple[int, ...] = ()
    keep_alive = -1
    if preexec is None:
        # No PR_SET_PDEATHSIG here: the child watches a pipe whose only writer is this process, and
        # the kernel closes it whatever kills us.
        watch, keep_alive = os.pipe()
        watch_fds = (watch,)
        config = {**config, "parent_pipe": watch}
    config = {**config, "parent_pid": os.getpid()}
    child_env[CHILD_CONFIG_VAR] = json.dumps(config)
    try:
        process = subprocess.Popen([sys.executable, "-m", "detrun._child"], env=child_env, preexec_fn=preexec,
                                   pass_fds=watch_fds)
    finally:
        for fd in watch_fds:
            os.close(fd)

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
        if keep_alive >= 0:
            os.close(keep_alive)
    return status


def _die_with_parent_linux() -> Callable[[], None] | None:
    """Return a preexec_fn that makes the child get SIGKILL when this process dies (Linux), or None.

    SIGKILL rather than SIGTERM: a training script that catches SIGTERM to checkpoint would live on,
    and a `kill -9` of detrun must not leave a run that later writes a complete trace.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def preexec() -> None:
        # Runs in the forked child before exec; the death signal survives exec. If the parent died
        # between fork and prctl, nothing would ever send it: check and go now.
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def signal_name(signum: int) -> str:
    """Return a signal's name (SIGKILL), or its number for one Python has no name for."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _salvage(temporary: str, output: str, status: int, quiet: bool, force: bool) -> None:
    """Turn a dead child's partial trace into a readable one that says it is incomplete."""
    if status < 0:
        reason = f"killed by {signal_name(-status)}"
    else:
        reason = f"exited with status {status} before detrun could finish the trace"
    steps = salvage(temporary, output, reason, status, force=force)
    if steps is None:
        print("detrun: the run died before its trace had a header; no trace was written", file=sys.stderr)
    elif not quiet:
        print(f"detrun: the run was {reason}; the incomplete trace ({steps} steps) is in {output}",
              file=sys.stderr)


# Signals whose default action dumps core: re-raised in the parent only to report the child's death,
# so the parent's own (useless) core dump is switched off first.
_CORE_SIGNALS = {getattr(signal, name) for name in ("SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE",
                                                    "SIGSEGV", "SIGSYS", "SIGXCPU", "SIGXFSZ") if hasattr(signal, name)}


def exit_like(status: int) -> NoReturn:
    """Exit the parent as the child ended: its status, or death by the same signal.

    A catchable signal is re-raised, so a caller's waitpid sees the same death; SIGKILL and SIGSTOP
    cannot be re-raised without losing detrun's own exit, so those exit with 128+N, which is what a
    shell reports for a process they killed.
    """
    if status >= 0:
        sys.exit(status)
    signum = -status
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if signum not in (signal.SIGKILL, signal.SIGSTOP):
        try:
            if signum in _CORE_SIGNALS:
                import resource

                resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
            signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
            os.kill(os.getpid(), signum)
        except (OSError, ValueError):
            pass  # a signal this process cannot take: fall through to 128+N
    sys.exit(128 + signum)


__all__ = ["record", "replay", "exit_like", "signal_name", "TraceError", "CHILD_CONFIG_VAR", "RECORDED_SETTINGS"]
