"""Where detrun's options end and the script's begin, for the commands that take `SCRIPT [ARGS]...`.

The rule (also in `--help` and the README):

- detrun's options go before SCRIPT; for `replay` they may also stand between TRACE and SCRIPT.
- Everything after SCRIPT is the script's, exactly as `python SCRIPT ARGS` would pass it, except
  that an option of the detrun command (say `-o` or `--strict`) written after SCRIPT is refused
  before anything runs, with the corrected command, when the script's source text never mentions
  that option. A script that does mention it (`"-o"`, `'--strict'`, `"--output-dir"` for
  `--output`, which argparse accepts as an abbreviation; or, with typer/fire/tyro/jsonargparse/
  HfArgumentParser, the parameter name `output`) takes it: nothing is guessed.
- `--` before SCRIPT ends detrun's options: everything after SCRIPT then goes to it unchecked.
  A `--` after SCRIPT is the script's own (python passes it on) and nothing after it is checked.
- `-h`/`--help` after SCRIPT is always the script's (argparse defines it without naming it).

Pure functions over the argument list and the script's text; the click glue is in cli/common.py.
"""
from __future__ import annotations

import re
from typing import Iterable, NamedTuple

# Parsers that derive option names from parameter or field names, so the option string itself
# need not appear in the script's source.
_NAME_DERIVING = re.compile(r"\b(?:typer|fire|tyro|jsonargparse|simple_parsing|HfArgumentParser)\b")


# NamedTuples, not dataclasses: the start-up path (cli/direct.py) imports no dataclasses (nor inspect).
class OptionSpec(NamedTuple):
    """One option of a detrun command: its spellings and whether it takes a value."""

    names: tuple[str, ...]
    takes_value: bool


class CommandLine(NamedTuple):
    """A command's arguments split into detrun's part and the script's."""

    options: list[str]  # detrun's options (with their values), in the order given
    leading: list[str]  # positionals before SCRIPT (replay's TRACE)
    double_dash: bool  # `--` came before SCRIPT: what follows SCRIPT is the script's, unchecked
    script: str | None
    script_args: list[str]
    unknown: str | None = None  # an option-like word before SCRIPT that the command does not have

    def reordered(self) -> list[str]:
        """Return the arguments as click parses them: options, `--`, positionals, SCRIPT, ARGS."""
        tail = [*self.leading, *([self.script] if self.script is not None else []), *self.script_args]
        return [*self.options, *(["--"] if self.double_dash else []), *tail]


class Misplaced(NamedTuple):
    """Detrun options found after SCRIPT, and the command line with them moved before it."""

    names: list[str]
    corrected: list[str]  # the arguments after the command name, the options moved before SCRIPT
    passthrough: list[str]  # the same arguments with `--` before SCRIPT: everything goes to the script


def _lookup(word: str, specs: Iterable[OptionSpec]) -> tuple[OptionSpec | None, bool]:
    """Return the option a word spells and whether its value is attached (`--output=x`, `-ox`)."""
    for spec in specs:
        for name in spec.names:
            if word == name:
                return spec, False
            if spec.takes_value and name.startswith("--") and word.startswith(name + "="):
                return spec, True
            if spec.takes_value and len(name) == 2 and not word.startswith("--") and word.startswith(name):
                return spec, True
    return None, False


def _short_flags(word: str, specs: list[OptionSpec]) -> OptionSpec | None | bool:
    """For `-qf` style groups: True if every letter is a known flag, the last letter's spec if it takes a
    value (its value follows or is attached), None if some letter is unknown."""
    if word.startswith("--") or len(word) < 3:
        return None
    for index, letter in enumerate(word[1:]):
        spec, _ = _lookup("-" + letter, specs)
        if spec is None:
            return None
        if spec.takes_value:
            return spec if index == len(word) - 2 else True  # `-qo FILE` or `-qoFILE`
    return True


def split_command_line(args: list[str], specs: list[OptionSpec], leading: int = 0) -> CommandLine:
    """Split raw arguments into detrun's options, the leading positionals, SCRIPT and its ARGS."""
    options: list[str] = []
    positionals: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        if word == "--":
            rest = args[index + 1:]
            need = max(0, leading - len(positionals))
            positionals.extend(rest[:need])
            rest = rest[need:]
            return CommandLine(options, positionals, True, rest[0] if rest else None, rest[1:])
        if word.startswith("-") and len(word) > 1:
            spec, attached = _lookup(word, specs)
            if spec is None:
                grouped = _short_flags(word, specs)
                if grouped is None:
                    return CommandLine(options, positionals, False, None, args[index:], unknown=word)
                spec, attached = (grouped, False) if isinstance(grouped, OptionSpec) else (None, True)
            options.append(word)
            if spec is not None and spec.takes_value and not attached and index + 1 < len(args):
                options.append(args[index + 1])
                index += 1
            index += 1
            continue
        if len(positionals) < leading:
            positionals.append(word)
            index += 1
            continue
        return CommandLine(options, positionals, False, word, args[index + 1:])
    return CommandLine(options, positionals, False, None, [])



def script_mentions(source: str, option: str) -> bool:
    """Return whether a script's source names an option, so that its own parser may take it.

    A short option counts as a whole quoted word (`"-o"`, `'-o/-O'`); a long one also as the start of
    a longer quoted option (`"--output-dir"`: argparse takes `--output` as its abbreviation). With a
    parser that derives options from names (typer, fire, ...), the name itself counts (`output`).
    """
    ending = r"(?=[\"'/=,\s])" if not option.startswith("--") else ""
    if re.search(r"[\"'\s\[(|,]" + re.escape(option) + ending, source):
        return True
    if option.startswith("--") and _NAME_DERIVING.search(source):
        return re.search(r"\b" + re.escape(option[2:].replace("-", "_")), source) is not None
    return False


def misplaced_options(line: CommandLine, specs: list[OptionSpec], source: str | None,
                      script_owned: Iterable[str] = ("-h", "--help")) -> Misplaced | None:
    """Return the detrun options written after SCRIPT that the script does not take, or None.

    `source` is the script's text (None when it cannot be read: then nothing is refused, since
    nothing can be known). Checking stops at a `--` among the script's arguments.
    """
    if line.double_dash or line.script is None or source is None:
        return None
    kept: list[str] = []
    moved: list[str] = []
    names: list[str] = []
    args = line.script_args
    index = 0
    while index < len(args):
        word = args[index]
        if word == "--":
            kept.extend(args[index:])
            break
        spec, attached = _lookup(word, specs) if word.startswith("-") else (None, False)
        name = word.partition("=")[0] if attached and word.startswith("--") else word[:2] if attached else word
        if spec is None or name in script_owned or script_mentions(source, name):
            kept.append(word)
            index += 1
            continue
        names.append(name)
        moved.append(word)
        if spec.takes_value and not attached and index + 1 < len(args) and args[index + 1] != "--":
            moved.append(args[index + 1])
            index += 1
        index += 1
    if not names:
        return None
    corrected = [*line.options, *moved, *line.leading, line.script, *kept]
    return Misplaced(names, corrected, [*line.options, "--", *line.leading, line.script, *line.script_args])


def misplaced_message(command: str, misplaced: Misplaced, script: str) -> str:
    """Return the one-line refusal: which options are detrun's, and the command to type instead."""
    from detrun.replay_inputs import shell_words

    unique = list(dict.fromkeys(misplaced.names))
    names = unique[0] if len(unique) == 1 else ", ".join(unique[:-1]) + " and " + unique[-1]
    plural = "are detrun options but come" if len(unique) > 1 else "is a detrun option but comes"
    return (f"{names} {plural} after the script; did you mean: "
            f"{shell_words(['detrun', command, *misplaced.corrected])} "
            f"(or, if {script} takes {names} itself: {shell_words(['detrun', command, *misplaced.passthrough])})")
