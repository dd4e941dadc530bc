"""The `detrun` command line: one module per command, registered here; every decision lives in the library.

`main` is the entry point (`detrun = "detrun.cli:main"`). Called as the console script and
`python -m detrun` call it, it first offers the command line to cli/direct.py, which runs a plain
`detrun record` / `detrun replay` line without importing click (start-up, issue 15); any other line,
and every attribute, is the click group's (cli/click_group.py), so click's tools take `main` as the group.
"""
from __future__ import annotations

import sys
from typing import Any

# Registered explicitly, by name and place, and imported only when invoked (or listed by --help):
# `detrun record` starts without importing what show, env or profile need. test_cli_registry.py
# imports every one of them, so a broken command is a failing test, never a silent "No such command".
COMMANDS = {
    "record": "detrun.cli.record_cmd:record_command",
    "replay": "detrun.cli.replay_cmd:replay_command",
    "show": "detrun.cli.show_cmd:show_command",
    "profile": "detrun.cli.profile_cmd:profile_command",
    "env": "detrun.cli.env_cmd:env_command",
    "check": "detrun.cli.check_cmd:check_command",
    "diff": "detrun.cli.diff_cmd:diff_command",
    "explain": "detrun.cli.explain_cmd:explain_command",
    "merge": "detrun.cli.merge_cmd:merge_command",
}


class DetrunMain:
    """The `detrun` command: cli/direct.py's plain record/replay lines, else the click group, imported on first use."""

    def __call__(self, args: list[str] | None = None, prog_name: str | None = None, **extra: Any) -> Any:
        if args is None and not extra:
            from detrun.cli.direct import run_direct

            run_direct(sys.argv[1:])  # exits when it ran the line; returns for click to parse it
        return self.group(args, prog_name, **extra)

    @property
    def group(self) -> Any:
        """Return the click group (importing click)."""
        from detrun.cli.click_group import main as group

        return group

    def __getattr__(self, name: str) -> Any:
        return getattr(self.group, name)


main = DetrunMain()
