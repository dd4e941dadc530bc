"""Install a session in every Python process of a recorded command: the ranks of torchrun, accelerate, Lightning.

A launcher starts the ranks itself, so detrun cannot start them as it starts a script. Instead the
launcher's environment carries a `sitecustomize` on a PYTHONPATH entry that detrun owns (a directory
in the run's private scratch directory) and the path of this run's bootstrap config. Every Python
process of the command imports that `sitecustomize` at start-up; in a process that runs the user's
script as a rank (engine.process_roles says which), it claims the rank's role and re-executes the
interpreter, with the same interpreter options and PID, as `python -m detrun._child`, which then runs
the script under a session exactly as `detrun record train.py` does. Every other process (the
launcher itself, `python -c`, compiler workers) carries on untouched, and any `sitecustomize` the
environment already had still runs.

The config is written by detrun's launcher into its own 0700 directory; nothing in it comes from a
trace (replay passes the trace's path the user gave and settings the launcher validated).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping, MutableMapping

BOOT_VAR = "DETRUN_BOOT"  # the bootstrap config's path, inherited by every process of the command
# The child's session config (JSON). Here, not in child_process: the child reads it at start-up and
# must not import the launcher's machinery (subprocess, ctypes, shutil) to learn a name.
CHILD_CONFIG_VAR = "DETRUN_CHILD_CONFIG"
# In that config: a pipe on which the launcher sends, once the child has started, the config's part
# it computes meanwhile ({"config": {...}} after its checks of the script, and the fingerprint or a
# replay's environment report: off start-up's critical path).
LATE_CONFIG_FD_KEY = "late_config_fd"
# In that config: the bootstrap's variables (environment()), which the child starts without and
# gives to the processes the script starts.
BOOT_ENV_KEY = "boot_env"
PROCESSES_DIR = "procs"  # in the scratch directory: role claims, segments, reports
BOOT_CONFIG = "boot.json"  # in the scratch directory: the config of every process of the run

# The PYTHONPATH entry's only file. It must work on an interpreter without detrun (a different
# python the command runs): such a process is then noted, so the verdict cannot claim it was checked.
_SITECUSTOMIZE = '''\
# Written by detrun for one recorded or replayed command; removed when the command ends.
import os as _detrun_os
import sys as _detrun_sys
if _detrun_os.environ.get("DETRUN_BOOT") and not _detrun_os.environ.get("DETRUN_CHILD_CONFIG"):
    try:
        from detrun.bootstrap import boot as _detrun_boot
    except ImportError:
        _detrun_boot = None
    if _detrun_boot is not None:
        _detrun_boot()
    else:
        try:
            with open(_detrun_os.path.join(_detrun_os.path.dirname(_detrun_os.environ["DETRUN_BOOT"]), "procs",
                                           "nodetrun.%d" % _detrun_os.getpid()), "w") as _detrun_note:
                _detrun_note.write(" ".join(getattr(_detrun_sys, "orig_argv", _detrun_sys.argv))[:500])
        except OSError:
            pass


def _detrun_chain():
    """Run the sitecustomize this one shadows, if the environment has one."""
    import importlib.machinery
    here = _detrun_os.path.realpath(_detrun_os.path.dirname(__file__))
    rest = [p for p in _detrun_sys.path if _detrun_os.path.realpath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        import importlib.util
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_detrun_chain()
'''


def prepare(scratch: str, config: dict[str, Any]) -> dict[str, str]:
    """Write the bootstrap directory and config in the scratch directory; return the variables that find them."""
    env = environment(scratch)
    write_config(scratch, config)
    return env


def environment(scratch: str) -> dict[str, str]:
    """Write the bootstrap directory in the scratch directory; return the variables that find it.

    They are what child_environment() puts in front of a process's environment: the child that
    runs the script starts without them (it needs no bootstrap, and python would then compile the
    fresh sitecustomize at its start-up) and gives them to the processes the script starts. The
    config may follow (write_config) until the child starts the first process of the user's.
    """
    boot_dir = os.path.join(scratch, "boot")
    os.makedirs(boot_dir, mode=0o700, exist_ok=True)
    os.makedirs(os.path.join(scratch, PROCESSES_DIR), mode=0o700, exist_ok=True)
    with open(os.path.join(boot_dir, "sitecustomize.py"), "w", encoding="utf-8") as f:
        f.write(_SITECUSTOMIZE)
    return {BOOT_VAR: os.path.join(scratch, BOOT_CONFIG), "PYTHONPATH": boot_dir}


def write_config(scratch: str, config: dict[str, Any]) -> None:
    """Write the bootstrap config that every process of the run reads (environment() named its path)."""
    with open(os.path.join(scratch, BOOT_CONFIG), "w", encoding="utf-8") as f:
        json.dump({**config, "scratch_dir": scratch}, f)


def hide(environ: MutableMapping[str, str], path: list[str]) -> dict[str, str]:
    """Take the bootstrap out of a rank's view (os.environ, sys.path); return the variables its children need.

    The user's code sees the environment and sys.path plain `python` gives it; the variables come
    back only in the environment of the processes it starts (engine.sources.child_processes), so a
    launcher the script runs (Lightning's DDP) still starts its ranks under detrun.
    """
    config_path = environ.pop(BOOT_VAR, None)
    if config_path is None:
        return {}
    boot_dir = os.path.join(os.path.dirname(config_path), "boot")
    entries = environ.get("PYTHONPATH", "").split(os.pathsep)
    if entries and entries[0] == boot_dir:
        rest = os.pathsep.join(entries[1:])
        if rest:
            environ["PYTHONPATH"] = rest
        else:
            environ.pop("PYTHONPATH", None)
    path[:] = [entry for entry in path if entry != boot_dir]
    return {BOOT_VAR: config_path, "PYTHONPATH": boot_dir}


def child_environment(hidden: dict[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """Return a child's environment with the bootstrap put back in front of its PYTHONPATH."""
    merged = dict(env)
    merged[BOOT_VAR] = hidden[BOOT_VAR]
    existing = merged.get("PYTHONPATH")
    merged["PYTHONPATH"] = hidden["PYTHONPATH"] + (os.pathsep + existing if existing else "")
    return merged


def boot() -> None:
    """In a process starting up under a recorded command: become a session's child if it runs the user's script."""
    try:
        decision = _decide()
    except Exception as exc:  # noqa: BLE001 - never stop the user's process from starting
        print(f"detrun: warning: internal error in the process bootstrap: {type(exc).__name__}: {exc} "
              "(this process runs unrecorded)", file=sys.stderr)
        return
    if decision is None:
        return
    options, child_config = decision
    os.environ[CHILD_CONFIG_VAR] = json.dumps(child_config)
    sys.stdout.flush()
    sys.stderr.flush()
    # The same PID, so the launcher's bookkeeping (torchrun waits on this process) is unchanged.
    os.execv(sys.executable, [sys.executable, *options, "-m", "detrun._child"])


def _decide() -> tuple[list[str], dict[str, Any]] | None:
    """Return (interpreter options, child config) for a process to record or replay, else None."""
    from detrun.engine import process_roles

    with open(os.environ[BOOT_VAR], encoding="utf-8") as f:
        config = json.load(f)
    parsed = process_roles.target_of(list(getattr(sys, "orig_argv", sys.argv)))
    if parsed is None:
        return None
    options, target = parsed
    if not process_roles.runs_user_code(target):
        return None
    key = process_roles.key_from_env(os.environ)
    if key is None and not config.get("command"):
        return None  # `detrun record train.py`: only the ranks its script launches (Lightning's DDP)
    processes = os.path.join(config["scratch_dir"], PROCESSES_DIR)
    claimed = process_roles.claim_role(processes, key)
    if claimed is None:
        with open(os.path.join(processes, f"duplicate.{os.getpid()}"), "w", encoding="utf-8") as note:
            note.write(f"{target.display} as {key.role if key else 'main'} (a second process with that role)")
        return None
    base = os.path.join(processes, claimed.role)
    child: dict[str, Any] = {
        "mode": config["mode"], "target": {"name": target.name, "args": list(target.args), "module": target.is_module},
        "settings": config["settings"], "scratch_dir": config["scratch_dir"], "quiet": True,
        "process": {"key": claimed.as_dict(), "segment": base + ".seg", "report": base + ".report.json"},
    }
    if config["mode"] == "replay":
        child.update(trace_path=config["trace_path"], strict=False, ignore_output=config.get("ignore_output", []))
        # A merged multi-node trace: this node's ranks ran with this node's hash seed (validated by the launcher).
        seed = config.get("node_hashseeds", {}).get(str(claimed.node_rank))
        if seed is not None:
            os.environ["PYTHONHASHSEED"] = seed
    return options, child
