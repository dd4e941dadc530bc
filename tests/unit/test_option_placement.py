"""Where detrun's options end and the script's begin (detrun.cli.option_placement), as pure functions."""
from __future__ import annotations

import pytest

from detrun.cli.option_placement import (OptionSpec, misplaced_message, misplaced_options, script_mentions,
                                         split_command_line)

RECORD = [OptionSpec(("-o", "--output"), True), OptionSpec(("-f", "--force"), False),
          OptionSpec(("-q", "--quiet"), False), OptionSpec(("--policy",), True), OptionSpec(("-h", "--help"), False)]
REPLAY = [OptionSpec(("--strict",), False), OptionSpec(("--json",), True), OptionSpec(("-q", "--quiet"), False)]


@pytest.mark.parametrize("args,options,leading,dash,script,rest", [
    (["-o", "x.zst", "train.py", "-o", "y"], ["-o", "x.zst"], [], False, "train.py", ["-o", "y"]),
    (["--output=x", "-qf", "train.py"], ["--output=x", "-qf"], [], False, "train.py", []),
    (["-qo", "x", "t.py"], ["-qo", "x"], [], False, "t.py", []),
    (["-ox", "t.py"], ["-ox"], [], False, "t.py", []),
    (["--", "t.py", "-o", "x"], [], [], True, "t.py", ["-o", "x"]),
    (["t.py", "--", "-o"], [], [], False, "t.py", ["--", "-o"]),
])
def test_split_record(args: list[str], options: list[str], leading: list[str], dash: bool, script: str,
                      rest: list[str]) -> None:
    line = split_command_line(args, RECORD)
    assert (line.options, line.leading, line.double_dash, line.script, line.script_args) == \
        (options, leading, dash, script, rest)
    assert line.unknown is None


def test_split_replay_takes_options_between_trace_and_script() -> None:
    line = split_command_line(["t.zst", "--strict", "--json", "v.json", "train.py", "--strict"], REPLAY, leading=1)
    assert (line.options, line.leading, line.script, line.script_args) == \
        (["--strict", "--json", "v.json"], ["t.zst"], "train.py", ["--strict"])
    assert line.reordered() == ["--strict", "--json", "v.json", "t.zst", "train.py", "--strict"]
    no_script = split_command_line(["t.zst", "--strict"], REPLAY, leading=1)
    assert no_script.script is None and no_script.reordered() == ["--strict", "t.zst"]
    dashed = split_command_line(["--strict", "--", "t.zst", "a.py", "--json"], REPLAY, leading=1)
    assert dashed.double_dash and dashed.reordered() == ["--strict", "--", "t.zst", "a.py", "--json"]
    assert split_command_line(["t.zst", "--stirct"], REPLAY, leading=1).unknown == "--stirct"


def test_misplaced_options_and_the_corrected_command() -> None:
    line = split_command_line(["-q", "train.py", "--epochs", "3", "-o", "x.zst", "--policy=off", "-h"], RECORD)
    found = misplaced_options(line, RECORD, "print('hi')\n")
    assert found is not None
    assert found.names == ["-o", "--policy"]
    assert found.corrected == ["-q", "-o", "x.zst", "--policy=off", "train.py", "--epochs", "3", "-h"]
    assert found.passthrough == ["-q", "--", "train.py", "--epochs", "3", "-o", "x.zst", "--policy=off", "-h"]
    message = misplaced_message("record", found, "train.py")
    assert message.startswith("-o and --policy are detrun options but come after the script; did you mean: "
                              "detrun record -q -o x.zst --policy=off train.py --epochs 3 -h (or, if train.py")
    assert "\n" not in message


def test_nothing_is_refused_after_double_dash_or_without_source() -> None:
    assert misplaced_options(split_command_line(["--", "t.py", "-o", "x"], RECORD), RECORD, "") is None
    assert misplaced_options(split_command_line(["t.py", "--", "-o", "x"], RECORD), RECORD, "") is None
    assert misplaced_options(split_command_line(["t.py", "-o", "x"], RECORD), RECORD, None) is None
    assert misplaced_options(split_command_line(["t.py", "--epochs", "2"], RECORD), RECORD, "") is None


@pytest.mark.parametrize("source,option,mentioned", [
    ('parser.add_argument("-o", "--out")', "-o", True),
    ("@click.option('-o/-O')", "-o", True),
    ('parser.add_argument("-oo")', "-o", False),
    ('x = "--output-dir"', "--output", True),  # argparse takes --output as its abbreviation
    ('"--strict/--no-strict"', "--strict", True),
    ("if '--strict' in sys.argv:", "--strict", True),
    ("strict = True", "--strict", False),
    ("import typer\ndef main(output: str = 'x'): ...", "--output", True),  # typer derives --output
    ("def main(output: str = 'x'): ...", "--output", False),
    ("import fire\ndef main(digest_every=1): ...", "--digest-every", True),
    ("print('hello')", "-q", False),
])
def test_script_mentions(source: str, option: str, mentioned: bool) -> None:
    assert script_mentions(source, option) is mentioned
