"""cli/direct.py runs plain record/replay lines without click: the same values as click's, or click's turn."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest

from detrun.cli import direct
from detrun.cli.click_group import main as group
from detrun.cli.option_placement import OptionSpec
from detrun.cli.record_cmd import record_command
from detrun.cli.replay_cmd import replay_command

COMMANDS: dict[str, click.Command] = {"record": record_command, "replay": replay_command}


def _group_context() -> click.Context:
    """Return the group's context as `detrun` makes it: its settings (-h for help) pass to the command's."""
    return click.Context(group, info_name="detrun", **group.context_settings)


def _click_params(argv: list[str]) -> dict[str, Any]:
    """Return the values click's command gives the callback for this line."""
    command = COMMANDS[argv[0]]
    with command.make_context(argv[0], list(argv[1:]), parent=_group_context()) as ctx:
        return dict(ctx.params)


@pytest.mark.parametrize("name, specs", [("record", direct.RECORD_OPTIONS), ("replay", direct.REPLAY_OPTIONS)])
def test_the_option_tables_are_the_click_commands(name: str, specs: list[OptionSpec]) -> None:
    command = COMMANDS[name]
    ctx = click.Context(command, info_name=name, parent=_group_context())
    # As ScriptCommand.parse_args derives them.
    derived = [OptionSpec(tuple(p.opts + p.secondary_opts), not (p.is_flag or p.count))
               for p in command.get_params(ctx) if isinstance(p, click.Option)]
    assert derived == specs
    spelled = {spelling for spec in specs for spelling in spec.names}
    flags, values = ((direct.RECORD_FLAGS, direct.RECORD_VALUES) if name == "record" else (direct.REPLAY_FLAGS, {}))
    for word, param in [*flags.items(), *values.items()]:
        option = next(p for p in command.params if isinstance(p, click.Option) and word in p.opts + p.secondary_opts)
        assert word in spelled and option.name == param and option.is_flag == (word in flags), word


def test_the_defaults_are_the_click_commands(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("print(1)\n")
    record = _click_params(["record", str(script)])
    assert {k: v for k, v in record.items() if k not in ("script", "args")} == direct.RECORD_DEFAULTS
    replay = _click_params(["replay", "t.zst"])
    assert {k: v for k, v in replay.items() if k not in ("trace", "script", "args")} == direct.REPLAY_DEFAULTS


@pytest.mark.parametrize("line", [
    "record s.py",
    "record -q -f -o out.zst s.py",
    "record --quiet --force --output out.zst -m pkg.mod --lr 0.1",
    "record s.py --epochs 3 -x",
    "record s.py -o mine.txt",  # the script mentions -o: its own
    "record -q s.py -- -o",
    "replay t.zst",
    "replay -q t.zst s.py",
    "replay t.zst --strict -v s.py a b",
    "replay --allow-changed-script --allow-changed-args --no-pin-threads --in-place -m t.zst pkg.mod",
    "replay t.zst s.py --epochs 3",
])
def test_a_plain_line_gets_the_values_click_gives(line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.py").write_text('import sys\nprint(sys.argv)  # takes "-o"\n')
    argv = line.split()
    parsed = direct.parse_direct(argv)
    assert parsed is not None, line
    assert parsed == (argv[0], _click_params(argv))


@pytest.mark.parametrize("line", [
    "record", "record -h s.py", "record --help", "record --digest-every 5 s.py", "record -qf s.py",
    "record -oout.zst s.py", "record --output=out.zst s.py", "record -o -x.zst s.py", "record -- s.py",
    "record --bogus s.py", "record s.py -q",  # refused by click: the script never mentions -q
    "replay", "replay --json v.json t.zst s.py", "replay adir s.py", "replay t.zst s.py -v",
    "--version", "show t.zst", "env",
])
def test_any_other_line_is_left_to_click(line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.py").write_text("print(1)\n")
    (tmp_path / "adir").mkdir()
    assert direct.parse_direct(line.split()) is None, line
