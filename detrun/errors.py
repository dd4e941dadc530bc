"""The DetrunError hierarchy and the exit codes, in one place."""
from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes of the detrun command itself.

    A recorded or replayed script's own exit status passes through unchanged; these codes are
    used only when detrun itself stops the run or refuses its input.
    """

    OK = 0
    BAD_INPUT = 2  # missing script, unreadable/foreign/newer trace, refused overwrite, changed script/args
    DIVERGED = 3  # replay: a state or output check differed (with --strict: stopped at the first one)
    NONDETERMINISTIC = 4  # profile --fail-on found an unpatched nondeterministic op
    UNVERIFIED = 5  # replay: nothing of the training state could be checked, a hook failed, or work went unrecorded
    INTERNAL = 70  # a bug in detrun (EX_SOFTWARE)


class DetrunError(Exception):
    """An error detrun reports as one `detrun:` line and an exit code, never a traceback."""

    exit_code: ExitCode = ExitCode.BAD_INPUT


class ScriptNotFound(DetrunError):
    """The script or module to run does not exist."""


class TraceError(DetrunError):
    """A trace file is missing, foreign, corrupt, truncated or from a newer detrun."""


class OutputExists(DetrunError):
    """The output file exists and --force was not given."""


class ScriptChanged(DetrunError):
    """The script's sha256 differs from the recorded one."""


class ArgsChanged(DetrunError):
    """The replay's script arguments differ from the recorded ones."""


class PolicyError(DetrunError):
    """The determinism policy options are inconsistent or its profile is unreadable."""


class TargetRefused(DetrunError):
    """Replay was asked to run something only the trace names (a module, a file outside the cwd)."""


def write_crash_report(exc: BaseException) -> str | None:
    """Write the traceback of an internal error to a new file in the temp directory; return its path.

    The name is fixed (`detrun-crash-<pid>.txt`, with a counter if taken) rather than drawn from
    tempfile's random names, which in the child would consume the program's hooked `random`. The
    file is created with O_EXCL and O_NOFOLLOW, so a planted file or link is never written through.
    """
    import os
    import sys
    import tempfile
    import traceback

    from detrun import __version__

    text = (f"detrun {__version__} internal error\npython {sys.version}\nargv {sys.argv!r}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    directory = tempfile.gettempdir()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for attempt in range(100):
        suffix = "" if attempt == 0 else f"-{attempt}"
        path = os.path.join(directory, f"detrun-crash-{os.getpid()}{suffix}.txt")
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            continue
        except OSError:
            return None
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as report:
            report.write(text)
        return path
    return None


def internal_error(exc: BaseException) -> int:
    """Report an exception that escaped detrun's own code as one line plus a report file; return 70."""
    import sys

    path = write_crash_report(exc)
    where = f"details in {path}" if path else "no report file could be written"
    # One printable line, whatever the message holds (it may quote bytes from a hostile trace).
    message = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in " ".join(str(exc).split()))
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - a broken stdout must not hide the error line
        pass
    print(f"detrun: internal error: {type(exc).__name__}: {message} ({where})", file=sys.stderr)
    return int(ExitCode.INTERNAL)
