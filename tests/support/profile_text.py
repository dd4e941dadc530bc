"""Read `detrun profile`'s text output back: the table's rows and the summary line's counts (for the width tests)."""
from __future__ import annotations

import re
from collections import Counter

VERDICT_WORDS = ("changes bits", "may change", "deterministic", "not known")
FIX_WORDS = ("patch", "det mode", "none", "unknown", "-")

# A table row: `N  op  ...  <verdict>  ...  <fix>`, in the one-line and the two-line layout alike.
_ROW = re.compile(r"^\s*(?P<n>\d+)  (?P<op>\S+)  .*?\b(?P<verdict>" + "|".join(VERDICT_WORDS) + r")\b"
                  r"(?:  .*)?  (?P<fix>" + "|".join(re.escape(w) for w in FIX_WORDS) + r")$")

_OP_ALONE = re.compile(r"^\s*(?P<n>\d+)  (?P<op>\S+)$")


def table_rows(text: str) -> list[dict[str, str]]:
    """Return the table's rows (number, op, verdict, fix), in order; notes and detrun lines are skipped."""
    rows = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("detrun:"):
            continue
        match = _ROW.match(line)
        if match:
            rows.append(match.groupdict())
            continue
        # An op name too long for its column has a line of its own, then the row's words.
        alone = _OP_ALONE.match(line)
        after = _ROW.match("0  op  " + lines[index + 1].lstrip()) if alone and index + 1 < len(lines) else None
        if alone and after and lines[index + 1].startswith("   "):
            rows.append(dict(after.groupdict(), n=alone["n"], op=alone["op"]))
    return rows


def messages(text: str) -> list[str]:
    """Return detrun's messages with wrapped continuation lines joined back."""
    out: list[str] = []
    inside = False  # the previous line belongs to a detrun message
    for line in text.splitlines():
        if line.startswith("detrun: "):
            out.append(line[len("detrun: "):])
            inside = True
        elif inside and line.startswith(" " * 8):
            out[-1] += " " + line.strip()
        else:
            inside = False
    return out


def summary_counts(text: str) -> tuple[int, Counter[str], Counter[str]]:
    """Return the summary line's op count, its counts per verdict word and per fix word."""
    lines = [m for m in messages(text) if " judged on " in m]
    assert len(lines) == 1, f"want one summary line in:\n{text}"
    line = lines[0]
    total = int(line.split()[0])
    head, _, fixes = line.partition("; fix: ")
    verdicts: Counter[str] = Counter()
    for count, word in re.findall(r"(\d+) (changes bits|change bits|may change|deterministic|not known)", head):
        verdicts["changes bits" if word == "change bits" else word] += int(count)
    fix_counts: Counter[str] = Counter()
    for count, word in re.findall(r"(\d+) (patch|det mode|none|unknown)", fixes):
        fix_counts[word] += int(count)
    return total, verdicts, fix_counts


def assert_summary_matches_rows(text: str) -> list[dict[str, str]]:
    """Check that the summary counts exactly the table's rows, in the table's words; return the rows."""
    rows = table_rows(text)
    total, verdicts, fixes = summary_counts(text)
    assert total == len(rows), (total, rows)
    assert verdicts == Counter(row["verdict"] for row in rows), (verdicts, rows)
    assert +fixes == Counter(row["fix"] for row in rows if row["fix"] != "-"), (fixes, rows)
    assert [int(row["n"]) for row in rows] == list(range(1, len(rows) + 1))
    return rows
