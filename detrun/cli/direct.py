"""`detrun record` and `detrun replay` run straight from the command line, without click: the start-up path.

Importing click and building a command costs ~15 ms, out of the 0.1 s detrun may add to a run
(issue 15). A command line that uses only the plain forms in the tables below (flags, `-o FILE`,
SCRIPT and its ARGS, replay's TRACE) runs here; any other line (help, another option, `--`, an
attached value, a usage error, a detrun option after SCRIPT) goes to the click commands in
record_cmd.py / replay_cmd.py, which report it as they always did. Both paths end in run_record /
run_replay. tests/unit/test_cli_direct.py checks that the tables match the click commands and that
both paths turn a line into the same values.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from detrun.cli.option_placement import OptionSpec, misplaced_options, split_command_line

if TYPE_CHECKING:
    from detrun.runner import Target

# Every option of each command, as option_placement needs them to find SCRIPT (the click options'
# spellings, help included; the test compares them).
RECORD_OPTIONS = [
    OptionSpec(("-o", "--output"), True), OptionSpec(("-f", "--force"), False), OptionSpec(("-m", "--module"), False),
    OptionSpec(("--digest-every",), True), OptionSpec(("--policy",), True), OptionSpec(("--from-profile",), True),
    OptionSpec(("--kernel-steps",), True), OptionSpec(("--op-digests",), True), OptionSpec(("--op-digest-every",), True),
    OptionSpec(("--keep-inputs",), True), OptionSpec(("-q", "--quiet"), False), OptionSpec(("-h", "--help"), False),
]
REPLAY_OPTIONS = [
    OptionSpec(("-m", "--module"), False), OptionSpec(("--strict",), False), OptionSpec(("--json",), True),
    OptionSpec(("-v", "--verbose"), False), OptionSpec(("--ignore-output",), True),
    OptionSpec(("--allow-changed-script",), False), OptionSpec(("--allow-changed-args",), False),
    OptionSpec(("--no-pin-threads",), False), OptionSpec(("--outputs-dir",), True), OptionSpec(("--in-place",), False),
    OptionSpec(("-q", "--quiet"), False), OptionSpec(("-h", "--help"), False),
]
# What this path takes: a flag sets its parameter to True, a value option takes the next word as is.
RECORD_FLAGS = {"-f": "force", "--force": "force", "-m": "module", "--module": "module", "-q": "quiet",
                "--quiet": "quiet"}
RECORD_VALUES = {"-o": "output", "--output": "output"}
REPLAY_FLAGS = {"-m": "module", "--module": "module", "--strict": "strict", "-v": "verbose", "--verbose": "verbose",
                "--allow-changed-script": "allow_changed_script", "--allow-changed-args": "allow_changed_args",
                "--no-pin-threads": "no_pin_threads", "--in-place": "in_place", "-q": "quiet", "--quiet": "quiet"}
# The click commands' defaults (the test compares them).
RECORD_DEFAULTS: dict[str, Any] = {
    "output": "trace.zst", "force": False, "module": False, "digest_every": 0, "policy": "strict",
    "from_profile": None, "kernel_steps": 0, "op_digests": 0, "op_digest_every": 0, "keep_inputs": 10**9,
    "quiet": False,
}
REPLAY_DEFAULTS: dict[str, Any] = {
    "module": False, "strict": False, "report_json": None, "verbose": False, "ignore_output": (),
    "allow_changed_script": False, "allow_changed_args": False, "no_pin_threads": False, "outputs_dir": None,
    "in_place": False, "quiet": False,
}


def parse_direct(argv: list[str]) -> tuple[str, dict[str, Any]] | None:
    """Return (command, its parameters) for a plain record/replay line, or None for click to parse."""
    if not argv or argv[0] not in ("record", "replay"):
        return None
    name, args = argv[0], argv[1:]
    specs, flags, values, params = ((RECORD_OPTIONS, RECORD_FLAGS, RECORD_VALUES, dict(RECORD_DEFAULTS))
                                    if name == "record" else (REPLAY_OPTIONS, REPLAY_FLAGS, {}, dict(REPLAY_DEFAULTS)))
    leading = 1 if name == "replay" else 0
    line = split_command_line(args, specs, leading)
    if line.unknown is not None or line.double_dash or len(line.leading) != leading:
        return None
    if line.script is None and name == "record":
        return None
    index = 0
    while index < len(line.options):
        word = line.options[index]
        if word in flags:
            params[flags[word]] = True
        elif word in values and index + 1 < len(line.options) and not line.options[index + 1].startswith("-"):
            index += 1
            params[values[word]] = line.options[index]
        else:
            return None
        index += 1
    if name == "replay":
        trace = line.leading[0]
        # click.Path(dir_okay=False) refuses a directory or an unreadable file: click says so.
        if os.path.exists(trace) and (os.path.isdir(trace) or not os.access(trace, os.R_OK)):
            return None
        params["trace"] = trace
    params["script"], params["args"] = line.script, tuple(line.script_args)
    if line.script is not None and any(word.startswith("-") for word in line.script_args):
        if misplaced_options(line, specs, script_source(line.script, params["module"])) is not None:
            return None  # click's ScriptCommand refuses it, with the corrected command
    return name, params


def run_direct(argv: list[str]) -> None:
    """Run a plain record/replay line and exit as it does; return at once for any other line."""
    parsed = parse_direct(argv)
    if parsed is None:
        return
    name, params = parsed
    from detrun.errors import DetrunError, internal_error

    try:
        # The same handling as cli.common.DetrunGroup.invoke and click's standalone main.
        try:
            (run_record if name == "record" else run_replay)(**params)
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            print("Aborted!", file=sys.stderr, flush=True)
            sys.exit(1)
    except DetrunError as exc:
        print(f"detrun: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(int(exc.exit_code))
    except Exception as exc:  # noqa: BLE001 - the one place a bug in detrun becomes exit 70
        sys.exit(internal_error(exc))


def run_record(*, output: str, force: bool, module: bool, digest_every: int, policy: str, from_profile: str | None,
               kernel_steps: int, op_digests: int, op_digest_every: int, keep_inputs: int, quiet: bool, script: str,
               args: tuple[str, ...]) -> NoReturn:
    """Record SCRIPT ARGS (or a launcher command) with the parsed options; exit as the run did."""
    from detrun.launch import exit_like, record as record_run

    command = launcher_command(script, args, module)
    exit_like(record_run(None if command else make_target(script, args, module), output, force=force, quiet=quiet,
                         digest_every=digest_every, policy=policy, profile_path=from_profile,
                         kernel_steps=kernel_steps, op_digests=op_digests, op_digest_every=op_digest_every,
                         keep_inputs=keep_inputs, command=command))


def run_replay(*, module: bool, strict: bool, report_json: str | None, verbose: bool, ignore_output: tuple[str, ...],
               allow_changed_script: bool, allow_changed_args: bool, no_pin_threads: bool, outputs_dir: str | None,
               in_place: bool, quiet: bool, trace: str, script: str | None, args: tuple[str, ...]) -> NoReturn:
    """Replay TRACE (with SCRIPT ARGS, or the recorded ones) with the parsed options; exit with its status."""
    from detrun.launch import exit_like, replay as replay_run

    command = launcher_command(script, args, module) if script is not None else None
    exit_like(replay_run(trace, None if command else make_target(script, args, module),
                         allow_changed_script=allow_changed_script,
                         allow_changed_args=allow_changed_args, strict=strict, quiet=quiet,
                         pin_threads=not no_pin_threads, verbose=verbose, report_json=report_json,
                         ignore_output=ignore_output, outputs_dir=outputs_dir, outputs_in_place=in_place,
                         command=command))


def script_source(name: str, module: bool) -> str | None:
    """Return the text of the script (or -m module) about to run, or None if it cannot be found or read."""
    from detrun.errors import DetrunError
    from detrun.runner import Target, locate

    try:
        with open(locate(Target(name, (), module)), encoding="utf-8", errors="replace") as f:
            return f.read()
    except (DetrunError, OSError):
        return None


def launcher_command(script: str, args: tuple[str, ...], module: bool) -> list[str] | None:
    """Return SCRIPT ARGS as a command to run (torchrun, accelerate, a shell script), or None for a Python script.

    A word ending in .py, a directory or a readable file that is not executable runs under python as
    before; an executable file or a name on PATH (`torchrun`, `python`, `bash`) is a command.
    """
    if module or script.endswith((".py", ".pyz")) or os.path.isdir(script):
        return None
    if os.path.isfile(script):
        return [script, *args] if os.access(script, os.X_OK) else None
    if os.sep in script:
        return None
    import shutil  # here, not for a script: start-up, before the child starts

    return [script, *args] if shutil.which(script) is not None else None


def make_target(script: str | None, args: tuple[str, ...], module: bool) -> Target | None:
    """Return the Target of SCRIPT ARGS (a module with -m), or None without a script."""
    from detrun.runner import Target

    if script is None:
        return None
    return Target(script, tuple(args), module)
