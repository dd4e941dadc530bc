"""The child interpreter's entry point: open the session, install the hooks, run the script.

Started by detrun.launch as `python -m detrun._child` with the session config in an environment
variable, which is removed before the user's code can see it. The user's own code runs inside
`runner.run()`, which catches whatever it raises; anything escaping detrun's setup or finish is a
bug in detrun: one `internal error` line, a report file, exit 70.
"""
from __future__ import annotations

import gc
import json
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from detrun.engine.session import Session
    from detrun.errors import DetrunError
    from detrun.runner import CommandRunner, Runner


def main() -> None:
    """Run the configured target under a record or replay session and exit as it did."""
    # Start-up: no collection passes over detrun's own imports and setup (nothing of it is garbage);
    # the collector is back on, as python starts it, before the script's first line.
    gc.disable()
    from detrun.bootstrap import CHILD_CONFIG_VAR

    raw = os.environ.pop(CHILD_CONFIG_VAR, None)
    if raw is None:
        sys.exit("detrun: error: detrun._child is started by `detrun record` / `detrun replay`, not by hand")
    from detrun.errors import DetrunError, internal_error

    try:
        config = json.loads(raw)
        _follow_parent(config)
        from detrun.bootstrap import BOOT_ENV_KEY, hide

        # The script sees python's own environment and sys.path; its child processes get the bootstrap:
        # the launcher's child has it in its config (it starts without it), a rank was started
        # through it and gives it back. The config's first: a detrun run inside a recorded one
        # inherits the outer run's variables, which its own child leaves as python would.
        child_env = config.get(BOOT_ENV_KEY) or hide(os.environ, sys.path)
        runner, session = _setup(config, child_env)
        # What exists now is the interpreter's, the stdlib's and detrun's, long-lived: frozen, the
        # collector never walks it again (at exit that walk cost ~8 ms of start-up). Everything the
        # script creates is collected as under python.
        gc.freeze()
        gc.enable()
    except DetrunError as exc:
        _fail(exc)
    except Exception as exc:  # noqa: BLE001 - not the user's code: a bug in detrun
        sys.exit(internal_error(exc))

    try:
        # The user's code: its exceptions (a SyntaxError too) become the outcome or pass as python's
        # would; only detrun's own refusals (a module runpy cannot find) are caught here.
        outcome = runner.run()
    except DetrunError as exc:
        _fail(exc)
    try:
        verdict = session.finish(outcome)
    except DetrunError as exc:
        _fail(exc)
    except Exception as exc:  # noqa: BLE001
        sys.exit(internal_error(exc))
    if verdict is not None and outcome.exit_status == 0 and not outcome.keyboard_interrupt:
        # The script's own non-zero status passes through; otherwise the verdict decides.
        sys.stdout.flush()
        sys.exit(verdict.exit_code)
    outcome.finish()


def _setup(config: dict[str, Any], child_env: dict[str, str]) -> tuple[Runner | CommandRunner, Session]:
    """Open the record or replay session the config describes and install every source's hooks.

    `child_env` is what the script's own child processes need to find the bootstrap again.
    """
    from detrun.engine.session import Session
    from detrun.engine.sources import all_sources
    from detrun.runner import CommandRunner, Runner, Target
    from detrun.trace import TraceWriter, read_trace

    progress_fd = _progress_pipe(config)
    # Before this process prints anything: the launcher prints its own lines (a replay's environment
    # report) while computing it.
    late = _late_config(config)
    # The config's part the launcher checked while this interpreter started (launch.record, launch.replay).
    config.update(late.get("config", {}))
    if isinstance(config.get("settings"), dict):
        config["settings"]["child_env"] = child_env
    if config.get("process") is not None:
        return _setup_process(config)
    runner: Runner | CommandRunner
    if config.get("command") is not None:
        # `detrun record -- COMMAND`: this process runs the command and merges what its processes record;
        # it runs none of the user's code, so it installs no source and records under its own role.
        from detrun.bootstrap import child_environment

        hidden = config["settings"].get("child_env") or {}
        runner = CommandRunner(list(config["command"]),
                               env=child_environment(hidden, os.environ) if hidden else None)
        role, sources = "launcher", []
    else:
        runner = Runner(Target(config["target"]["name"], tuple(config["target"]["args"]), config["target"]["module"]))
        role, sources = "main", all_sources()
    if config["mode"] == "record":
        header = {**config["header"], **late.get("header", {})}  # in place of its placeholders
        writer = TraceWriter(config["trace_tmp"], header)
        session = Session("record", writer=writer, quiet=config["quiet"], progress_fd=progress_fd, role=role,
                          settings={**config["settings"], "trace_path": config["trace_path"],
                                    "force": config.get("force", False)})
    else:
        trace = read_trace(config["trace_path"])
        if not trace.complete and not config["quiet"]:
            print(f"detrun: warning: the trace is incomplete ({trace.end.get('reason') if trace.end else '?'}); "
                  "only its recorded part can be checked", file=sys.stderr)
        session = Session("replay", trace=trace, strict=config["strict"], quiet=config["quiet"], role=role,
                          progress_fd=progress_fd, settings=config["settings"],
                          verbose=config.get("verbose", False), report_json=config.get("report_json"),
                          ignore_output=tuple(config.get("ignore_output", ())))
        for cause in late.get("causes", []):  # environment differences, most likely first
            session.note_cause(cause)
        alias = config.get("main_script_alias")
        # The recorded script's content under another name.
        if alias and isinstance(runner, Runner) and runner.code_filename is not None:
            from detrun.engine.call_sites import alias_main_script

            alias_main_script(runner.code_filename, alias)
    # Worker segments and reports go to the launcher's private directory, never to a trace's choice.
    session.scratch_dir = config.get("scratch_dir")
    session.install(sources)
    return runner, session


def _setup_process(config: dict[str, Any]) -> tuple[Runner, Session]:
    """Open the session of one process of a launched command (a rank), under its role (detrun.bootstrap)."""
    from detrun.engine.process_roles import ProcessKey
    from detrun.engine.process_segments import check_world, topology_cause
    from detrun.engine.session import Session
    from detrun.engine.sources import all_sources
    from detrun.errors import TargetRefused
    from detrun.runner import Runner, Target
    from detrun.trace import TraceWriter, read_trace
    from detrun.trace.registry import PROCESS

    process = config["process"]
    key = ProcessKey(**process["key"])
    runner = Runner(Target(config["target"]["name"], tuple(config["target"]["args"]), config["target"]["module"]))
    settings = {**config["settings"], "process_segment": process["segment"], "process_report": process["report"]}
    if config["mode"] == "record":
        writer = TraceWriter(process["segment"] + ".partial", segment=key.role)
        session = Session("record", writer=writer, quiet=True, role=key.role, settings=settings)
    else:
        trace = read_trace(config["trace_path"])
        try:
            check_world(trace, key, config["trace_path"])
        except TargetRefused as exc:
            # The launcher's session says it again as the run's last line (the launcher's own errors follow ours).
            # Written whole, then renamed: the launcher kills the other ranks when one fails, and a note cut
            # between its creation and its write would be read as an empty refusal.
            refused = process["report"].removesuffix(".report.json") + ".refused"
            with open(refused + ".partial", "w", encoding="utf-8") as note:
                note.write(str(exc))
            os.replace(refused + ".partial", refused)
            raise
        session = Session("replay", trace=trace.of_process(key.role), quiet=True, role=key.role, settings=settings,
                          ignore_output=tuple(config.get("ignore_output", ())))
        for cause in [topology_cause(trace, key), *config.get("causes", [])]:
            if cause:
                session.note_cause(cause)
    session.process_key = key
    session.scratch_dir = config.get("scratch_dir")
    session.install(all_sources())
    if session.recording:
        session.emit(PROCESS, key.as_dict())
    else:
        session.take(PROCESS)  # check_world matched it to this process already
    return runner, session


def _late_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return the config's part the launcher sends once this process has started (child_process.run_child)."""
    from detrun.bootstrap import LATE_CONFIG_FD_KEY

    fd = config.get(LATE_CONFIG_FD_KEY)
    if not isinstance(fd, int):
        return {}
    with open(fd, "rb") as pipe:  # waits for the launcher, which computed it while this interpreter started
        data = pipe.read()
    late = json.loads(data) if data else None
    if not isinstance(late, dict):
        raise RuntimeError("the launcher did not send the rest of the session config")
    return late


def _progress_pipe(config: dict[str, Any]) -> int | None:
    """Return the pipe to the launcher's progress line, kept from the script's own child processes."""
    from detrun.progress_line import PROGRESS_FD_KEY

    fd = config.get(PROGRESS_FD_KEY)
    if not isinstance(fd, int):
        return None
    os.set_inheritable(fd, False)
    os.set_blocking(fd, False)  # a full pipe drops an update; it never holds up the training
    return fd


def _follow_parent(config: dict[str, Any]) -> None:
    """Make sure this process does not outlive the detrun process that started it.

    The launcher passes a pipe whose only writer it holds, and a thread here waits for end-of-file
    on it. (PR_SET_PDEATHSIG would need ctypes on both sides, and the launcher's preexec_fn made
    subprocess fork instead of spawn: some 8 ms of start-up.)
    """
    parent = config.get("parent_pid")
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)  # the parent died before we could be tied to it
    fd = config.get("parent_pipe")
    if fd is not None:
        watch_parent(int(fd))


def watch_parent(fd: int) -> None:
    """Kill this process with SIGKILL when the pipe `fd` reaches end-of-file (its writer died)."""
    import _thread  # not `threading`: the watcher must not appear in the program's threading.enumerate()

    os.set_inheritable(fd, False)  # the script's own child processes have no use for it

    def watch() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    _thread.start_new_thread(watch, ())


def _fail(exc: DetrunError) -> NoReturn:
    """Report a DetrunError as one line and exit with its code."""
    sys.stdout.flush()
    print(f"detrun: error: {exc}", file=sys.stderr)
    sys.exit(int(exc.exit_code))


if __name__ == "__main__":
    main()
