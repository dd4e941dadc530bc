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

import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from detrun import __version__, bootstrap
from detrun.env.collectives import pinned_collective_env, validated_collective_env
from detrun.errors import ArgsChanged, OutputExists, PolicyError, ScriptChanged, TargetRefused, TraceError
from detrun.child_process import CHILD_CONFIG_VAR, exit_like, run_child, scratch_directory, signal_name

if TYPE_CHECKING:
    from detrun.env import diff as env_diff
    from detrun.runner import Target

# Start-up: `detrun record` starts its child with only the modules above loaded. What checks the
# script (runner), the fingerprint, the replay's input checks (replay_inputs), the trace reader,
# salvage and env.diff are imported where they are used, while the child starts or in a replay.


def check_output(output: str, force: bool) -> None:
    """Refuse an output path that exists (unless `force`) or whose directory cannot be written."""
    if os.path.exists(output) and not force:
        raise OutputExists(f"{output} exists; pass --force to overwrite it")
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise OutputExists(f"cannot write {output}: no such directory {directory}")
    if not os.access(directory, os.W_OK):
        raise OutputExists(f"cannot write {output}: {directory} is not writable")

def policy_ops(policy: str, profile_path: str | None) -> list[str]:
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

def record(target: Target | None, output: str, *, force: bool = False, quiet: bool = False,
           digest_every: int = 0, policy: str = "strict", profile_path: str | None = None,
           kernel_steps: int = 0, op_digests: int = 0, op_digest_every: int = 0,
           command: list[str] | None = None, keep_inputs: int = 1 << 30) -> int:
    """Record one run of the target (or of a launcher `command`) into `output`; return its exit status.

    The child starts first, with only the environment it must be born with (the hash seed, the
    pinned NCCL variables, the bootstrap); the checks and the session config follow while its
    interpreter starts (start-up, issue 15). A refused input stops the child before it has run
    anything: no script ran and no trace was written, as before.
    """
    user_hashseed = os.environ.get("PYTHONHASHSEED")
    # 0 would disable hash randomisation, which is itself a different program: pick from 1..2**32-1.
    # os.urandom, not secrets (start-up: secrets imports random); the modulo's bias is 2**-32.
    hashseed = (user_hashseed if user_hashseed not in (None, "", "random")
                else str(int.from_bytes(os.urandom(8), "big") % (2**32 - 1) + 1))
    nccl_env = pinned_collective_env(policy, os.environ)

    def session_config(scratch: str, temporary: str) -> dict[str, Any]:
        """Check the inputs and return the child's session config, and the fingerprint (run_child's late_config)."""
        from detrun.env.fingerprint import THREAD_ENV_NAMES, fingerprint
        from detrun.replay_inputs import RECORDED_SETTINGS
        from detrun.runner import resolve, syntax_error_of

        resolved = resolve(target) if target is not None else None
        check_output(output, force)
        chosen_ops = policy_ops(policy, profile_path)
        if resolved is not None and (error := syntax_error_of(resolved)) is not None:
            raise _ScriptSyntaxError(error)
        header: dict[str, Any] = {
            "detrun_version": __version__,
            # datetime.now(timezone.utc).isoformat(timespec="seconds"), without importing datetime (start-up).
            "created": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            "env": None,  # the fingerprint, computed while the child starts (run_child's late_config)
            **({"script": {"name": target.name, "module": target.is_module, "path": resolved.path,
                           "sha256": resolved.sha256}, "argv": list(target.args)}
               if target is not None and resolved is not None else {"command": list(command or [])}),
            "cwd": os.getcwd(),
            "settings": {
                "hashseed": hashseed,
                "hashseed_from_user": user_hashseed is not None,
                "thread_env": {name: os.environ.get(name) for name in THREAD_ENV_NAMES},
                "digest_every": digest_every,  # 0: auto (engine/digest_cadence.py)
                "digest_last_step": True,
                "policy": policy,
                "policy_ops": chosen_ops,
                "tf_op_determinism": policy != "off",
                "kernel_steps": kernel_steps,  # CUDA kernel names are captured for this many optimizer steps
                "op_digests": op_digests,  # op output digests: the first K optimizer steps ...
                "op_digest_every": op_digest_every,  # ... and every Nth (0: none)
                "nccl_env": nccl_env,  # env/collectives.py: pinned for every rank, so reductions repeat
                "keep_inputs": keep_inputs,  # bytes of overwritten inputs kept beside the trace
            },
        }
        assert tuple(header["settings"]) == RECORDED_SETTINGS, "replay passes on only RECORDED_SETTINGS"
        config = {**_runs(target, command), "header": header, "trace_tmp": temporary, "trace_path": output,
                  "force": force, "quiet": quiet, "settings": header["settings"], "scratch_dir": scratch}
        bootstrap.write_config(scratch, {"mode": "record", "command": command is not None,
                                         "settings": header["settings"]})
        fingerprint_dir = os.path.dirname(resolved.path) if resolved is not None else os.getcwd()
        return {"config": config, "header": {"env": fingerprint(fingerprint_dir)}}

    with scratch_directory() as scratch:
        temporary = os.path.join(scratch, "trace.partial")
        # Every Python process the run starts finds detrun's bootstrap: the ranks of a launcher, or
        # those Lightning's DDP starts from the script, record under their own role (detrun.bootstrap).
        try:
            status = run_child({"mode": "record", "quiet": quiet}, {"PYTHONHASHSEED": hashseed, **nccl_env},
                               late_config=lambda: session_config(scratch, temporary),
                               boot_env=bootstrap.environment(scratch))
        except _ScriptSyntaxError as refused:
            from detrun.runner import report_syntax_error

            # As `python SCRIPT` would: the error alone, status 1, nothing run and no trace written.
            report_syntax_error(refused.error)
            return 1
        if os.path.exists(temporary):  # the child died before publishing its trace
            _salvage(temporary, output, status, quiet, force)
    return status


class _ScriptSyntaxError(Exception):
    """The recorded script does not compile: reported as python would, after the child was stopped."""

    def __init__(self, error: SyntaxError) -> None:
        super().__init__(str(error))
        self.error = error

def replay(trace_path: str, target: Target | None, *, allow_changed_script: bool = False,
           allow_changed_args: bool = False, strict: bool = False, quiet: bool = False,
           pin_threads: bool = True, verbose: bool = False, report_json: str | None = None,
           ignore_output: tuple[str, ...] = (), op_capture: tuple[int, str] | None = None,
           command: list[str] | None = None, outputs_dir: str | None = None,
           outputs_in_place: bool = False) -> int:
    """Replay a trace; return the script's non-zero exit status, else the verdict's exit code.

    `op_capture` (detrun explain's): (S, path): digest every op of steps 1..S, with its call site,
    write them to `path` (a scratch file of the caller's, never the trace's choice) and stop after step S.
    """
    from detrun.replay_inputs import (is_arg_list, python_command, recorded_script, resolve_here, shell_words,
                                      validated_hashseed, validated_thread_env)
    from detrun.runner import Target, report_syntax_error, syntax_error_of
    from detrun.trace import read_header

    header = read_header(trace_path)
    if "command" in header or command is not None:
        return _replay_command(trace_path, header, command, allow_changed_args=allow_changed_args, strict=strict,
                               quiet=quiet, pin_threads=pin_threads, verbose=verbose, report_json=report_json,
                               ignore_output=ignore_output)
    recorded = header.get("script")
    recorded_args = header.get("argv", [])
    if not isinstance(recorded, dict) or not is_arg_list(recorded_args):
        raise TraceError(f"{trace_path} is corrupt (the recorded script or argv is malformed)")
    recorded_args = list(recorded_args)
    trace_settings = header.get("settings")
    if not isinstance(trace_settings, dict):
        raise TraceError(f"{trace_path} is corrupt (its settings are not a map)")
    if trace_settings.get("in_process"):
        raise TargetRefused(f"{trace_path} was recorded in-process by detrun.record(), not from a script; "
                            "replay it in Python with `with detrun.replay(...)`")
    hashseed = validated_hashseed(trace_settings.get("hashseed"), trace_path)
    thread_env, refused = validated_thread_env(trace_settings.get("thread_env"))
    settings, child_env = _replay_settings(trace_settings, hashseed, thread_env, refused, pin_threads)
    # The user's options, never the trace's: where the replay's written files go.
    settings.update(outputs_dir=os.path.abspath(outputs_dir) if outputs_dir else None,
                    outputs_in_place=outputs_in_place)
    if op_capture is not None:
        settings.update(explain_until=int(op_capture[0]), op_dump=os.path.abspath(op_capture[1]))

    def session_config() -> dict[str, Any]:
        """Check the script against the recording; return what runs and the environment report (late_config)."""
        chosen = target
        if chosen is None:
            resolved = recorded_script(trace_path, recorded, recorded_args, header.get("cwd"))
            chosen = resolved.target
        else:
            if not chosen.args and recorded_args:
                chosen = Target(chosen.name, tuple(recorded_args), chosen.is_module)
            elif list(chosen.args) != recorded_args and not allow_changed_args:
                raise ArgsChanged(f"arguments {list(chosen.args)} differ from the recorded {recorded_args}; "
                                  "omit them to use the recorded ones, or pass --allow-changed-args")
            resolved = resolve_here(chosen, header.get("cwd"))
            if resolved.sha256 != recorded.get("sha256") and not allow_changed_script:
                raise ScriptChanged(f"{chosen.name} changed since it was recorded (sha256 {resolved.sha256[:12]}… "
                                    f"vs recorded {str(recorded.get('sha256'))[:12]}…); pass --allow-changed-script "
                                    "to replay anyway")
        if (error := syntax_error_of(resolved)) is not None:  # a changed script (--allow-changed-script)
            raise _ScriptSyntaxError(error)
        report = _environment_report(header.get("env"), os.path.dirname(resolved.path), pin_threads,
                                     None if quiet else f"detrun: replaying: {shell_words(python_command(chosen))}")
        return {"config": {"target": _target_data(chosen),
                           "main_script_alias": main_script_alias(chosen, resolved.sha256, recorded)}, **report()}

    with scratch_directory() as scratch:
        # What runs comes late (session_config), checked while the child starts, as in record().
        config = {"mode": "replay", "trace_path": os.path.abspath(trace_path),
                  "strict": strict, "quiet": quiet, "settings": settings, "scratch_dir": scratch,
                  # The user's options, never the trace's: a trace chooses no path detrun writes to.
                  "verbose": verbose, "report_json": os.path.abspath(report_json) if report_json else None,
                  "ignore_output": list(ignore_output)}
        boot_env = bootstrap.prepare(scratch, {"mode": "replay", "command": False, "settings": settings,
                                               "trace_path": os.path.abspath(trace_path),
                                               "ignore_output": list(ignore_output)})
        try:
            status = run_child(config, child_env, late_config=session_config, boot_env=boot_env)
        except _ScriptSyntaxError as refused:
            report_syntax_error(refused.error)
            return 1
        _put_back(scratch)
        _say_if_killed(status)
        return status

def _environment_report(recorded: Any, directory: str, pin_threads: bool,
                        replaying: str | None) -> Callable[[], dict[str, Any]]:
    """Return the environment report of a replay's late config: its environment compared with the recording's.

    It runs while the child starts (the fingerprint is off start-up's critical path) and before the
    child can print anything: the differences that can change bits, one per line, then the
    `replaying:` line (None: quiet); the session gets them as causes, the first named as the likely
    cause if the replay diverges.
    """
    def report() -> dict[str, Any]:
        from detrun.env import diff as env_diff
        from detrun.env.fingerprint import fingerprint
        from detrun.replay_inputs import as_dict

        differences = env_diff.classify(env_diff.diff(as_dict(recorded), fingerprint(directory)),
                                        threads_pinned=pin_threads)
        if replaying is not None:
            _print_env_diff(differences)
            print(replaying, file=sys.stderr)
        return {"causes": env_diff.causes(differences)}

    return report

def _replay_settings(trace_settings: dict[str, Any], hashseed: str, thread_env: dict[str, str | None],
                     refused: list[str], pin_threads: bool) -> tuple[dict[str, Any], dict[str, str | None]]:
    """Return the replay's settings and the environment it pins, from a trace's validated settings."""
    from detrun.replay_inputs import RECORDED_SETTINGS

    settings: dict[str, Any] = {key: trace_settings[key] for key in RECORDED_SETTINGS if key in trace_settings}
    nccl_env, refused_nccl = validated_collective_env(trace_settings.get("nccl_env"))
    settings.update(hashseed=hashseed, thread_env=thread_env, pin_threads=pin_threads, nccl_env=nccl_env)
    child_env: dict[str, str | None] = {"PYTHONHASHSEED": hashseed, **nccl_env}
    refused = refused + refused_nccl
    if pin_threads:
        # Pin the thread environment the recording ran with (absent there means absent here).
        child_env.update(thread_env)
    if refused:
        print(f"detrun: warning: ignored {len(refused)} environment setting(s) in the trace that detrun never "
              f"sets (only thread-count and NCCL algorithm variables with plain values): {', '.join(refused)}",
              file=sys.stderr)
    return settings, child_env

def _replay_command(trace_path: str, header: dict[str, Any], command: list[str] | None, *, allow_changed_args: bool,
                    strict: bool, quiet: bool, pin_threads: bool, verbose: bool, report_json: str | None,
                    ignore_output: tuple[str, ...]) -> int:
    """Replay a trace recorded with `detrun record -- COMMAND`: run the user's command, each rank under its role."""
    from detrun.replay_inputs import as_dict, is_arg_list, shell_words, validated_hashseed, validated_thread_env

    recorded = header.get("command")
    if recorded is None:
        raise TargetRefused(f"{trace_path} was recorded from a script, not a command: replay it with "
                            f"`detrun replay {trace_path} SCRIPT`")
    if not is_arg_list(recorded) or not recorded:
        raise TraceError(f"{trace_path} is corrupt (the recorded command is malformed)")
    if command is None:
        # The trace never chooses what runs: the user types the command, which must be the recorded one.
        raise TargetRefused(f"{trace_path} recorded a command; replay it by giving the command: "
                            f"detrun replay {shell_words([trace_path])} -- {shell_words(list(recorded))}")
    # A merged multi-node trace holds every node's command (each has its own --node_rank).
    recorded_commands = [list(recorded), *(list(c) for c in as_dict(header.get("node_commands")).values()
                                           if is_arg_list(c))]
    if list(command) not in recorded_commands and not allow_changed_args:
        raise ArgsChanged(f"the command differs from the recorded one ({shell_words(list(recorded))}); "
                          "pass --allow-changed-args to replay anyway")
    trace_settings = header.get("settings")
    if not isinstance(trace_settings, dict):
        raise TraceError(f"{trace_path} is corrupt (its settings are not a map)")
    hashseed = validated_hashseed(trace_settings.get("hashseed"), trace_path)
    thread_env, refused = validated_thread_env(trace_settings.get("thread_env"))
    settings, child_env = _replay_settings(trace_settings, hashseed, thread_env, refused, pin_threads)
    report = _environment_report(header.get("env"), os.getcwd(), pin_threads,
                                 None if quiet else f"detrun: replaying: {shell_words(list(command))}")
    with scratch_directory() as scratch:
        config = {"mode": "replay", "command": list(command), "trace_path": os.path.abspath(trace_path),
                  "strict": strict, "quiet": quiet, "settings": settings, "scratch_dir": scratch, "verbose": verbose,
                  "report_json": os.path.abspath(report_json) if report_json else None,
                  "ignore_output": list(ignore_output)}
        # A merged multi-node trace: each node's ranks ran with their node's hash seed.
        node_hashseeds = {str(node): validated_hashseed(seed, trace_path)
                          for node, seed in as_dict(header.get("node_hashseeds")).items()}
        boot_env = bootstrap.prepare(scratch, {"mode": "replay", "command": True, "settings": settings,
                                               "trace_path": os.path.abspath(trace_path),
                                               "ignore_output": list(ignore_output),
                                               "node_hashseeds": node_hashseeds})
        status = run_child(config, child_env, late_config=report, boot_env=boot_env)
        _put_back(scratch)
        _say_if_killed(status)
        return status

def _put_back(scratch: str) -> None:
    """Put back the recording's files a replay that died had saved away (engine.replay_backups)."""
    from detrun.engine.replay_backups import restore_leftovers

    restored = restore_leftovers(scratch)
    if restored:
        print(f"detrun: the replay ended before it could put the recording's files back; restored "
              f"{len(restored)}: {', '.join(restored[:3])}{' …' if len(restored) > 3 else ''}", file=sys.stderr)

def main_script_alias(target: Target, sha256: str, recorded: dict[str, Any]) -> str | None:
    """Return the recorded script's file name when the replayed script is the same content under another name.

    Call sites are `file:line`; a script is identified by its content, so a renamed copy's call
    sites must read as the recorded ones. None when the names agree, the contents differ, or either
    run is a module.
    """
    name = recorded.get("name")
    if target.is_module or recorded.get("module") or not isinstance(name, str) or sha256 != recorded.get("sha256"):
        return None
    recorded_base = os.path.basename(name)
    if not recorded_base or recorded_base == os.path.basename(target.name) or not recorded_base.isprintable():
        return None
    return recorded_base

def _print_env_diff(differences: list[env_diff.Difference]) -> None:
    """Report environment differences from the recording: those that can change bits one per line."""
    from detrun.env.diff import report_lines

    for line in report_lines(differences):
        print(f"detrun: {line}", file=sys.stderr)

def _target_data(target: Target) -> dict[str, Any]:
    return {"name": target.name, "args": list(target.args), "module": target.is_module}

def _runs(target: Target | None, command: list[str] | None) -> dict[str, Any]:
    """Return the child config's part that says what runs: the script, or the launcher command."""
    if command is not None:
        return {"command": list(command)}
    assert target is not None
    return {"target": _target_data(target)}

def _say_if_killed(status: int) -> None:
    """Say that a replay died of a signal, which may come after its verdict (seen: a crash at interpreter exit)."""
    if status < 0:
        print(f"detrun: the replay was killed by {signal_name(-status)}; a verdict printed above covers the run "
              "up to that point, and the exit status is the signal's", file=sys.stderr)


def _salvage(temporary: str, output: str, status: int, quiet: bool, force: bool) -> None:
    """Turn a dead child's partial trace into a readable one that says it is incomplete."""
    if status < 0:
        reason = f"killed by {signal_name(-status)}"
    else:
        reason = f"exited with status {status} before detrun could finish the trace"
    from detrun.trace.salvage import salvage

    steps = salvage(temporary, output, reason, status, force=force)
    if steps is None:
        print("detrun: the run died before its trace had a header; no trace was written", file=sys.stderr)
    elif not quiet:
        print(f"detrun: the run was {reason}; the incomplete trace ({steps} steps) is in {output}",
              file=sys.stderr)


__all__ = ["record", "replay", "exit_like", "signal_name", "CHILD_CONFIG_VAR"]
