"""Name the program's line that caused an event (`file:LINE`), the same way in a recording and its replay.

Call sites are how a replay matches an event to its recording, so they must not depend on
detrun's own frames, the standard library, the caller of an in-process block, or the name the
main script was saved under.
"""
from __future__ import annotations

import os
import sys
import sysconfig
import types
from typing import Any, Callable, TypeVar

_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the detrun package
_STDLIB_DIR = sysconfig.get_paths()["stdlib"]


# The code of detrun's in-process entry points (detrun.api's `with` blocks). A hook that fires while
# one of them installs or finishes the session is detrun's doing, not the program's: the frames above
# it are the caller's `with` line, which differs between a recording and its replay, so call sites
# stop there, as they stop at the top of the child interpreter.
_ENTRY_CODES: set[types.CodeType] = set()


_Function = TypeVar("_Function", bound=Callable[..., Any])


def entry_point(function: _Function) -> _Function:
    """Mark a function whose callers' frames are never the program's call site (a decorator)."""
    _ENTRY_CODES.add(function.__code__)
    return function


# Replay of a script identical to the recorded one under another name: (the replayed script's code
# filename, the recorded script's file name). A script is identified by its content, so its call
# sites carry the recorded name and `b.py:3` matches the `a.py:3` of the recording.
_main_script_alias: tuple[str, str] | None = None


def alias_main_script(code_filename: str, recorded_name: str) -> None:
    """Name the main script's call sites `recorded_name:LINE` (its content is the recorded script's)."""
    global _main_script_alias
    _main_script_alias = (code_filename, recorded_name)


def call_site(also_skip: str = "") -> str:
    """Return `file:line` of the nearest frame outside detrun, the standard library and `also_skip` (a directory)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code in _ENTRY_CODES:
            break
        filename = frame.f_code.co_filename
        own = filename.startswith(_OWN_DIR)
        stdlib = filename.startswith(_STDLIB_DIR) and "site-packages" not in filename
        skipped = bool(also_skip) and filename.startswith(also_skip)
        if not (own or stdlib or skipped or filename.startswith("<frozen")):
            if _main_script_alias is not None and filename == _main_script_alias[0]:
                return f"{_main_script_alias[1]}:{frame.f_lineno}"
            return f"{os.path.basename(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"
