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
