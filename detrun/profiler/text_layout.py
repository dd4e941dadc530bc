"""Plain-text layout for the profile report: the output width, columns that never break a word, wrapping.

Nothing here knows about ops; `report` decides what goes in the cells. Cells are laid out on one
line each, padded, never wrapped: a cell too wide for the line is either truncated from the start
(a flexible column, such as a call site, keeps its `file:line` end) or the caller picks another
layout. Wrapped prose breaks only between words; a single word longer than the line is cut from
its start too, so that no line is ever wider than asked.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence, TextIO

ELLIPSIS = "…"
FALLBACK_WIDTH = 80  # piped output, or a terminal that does not say
MIN_WIDTH = 40  # below this no layout is readable; lines may then exceed the width
GAP = "  "


def output_width(stream: TextIO) -> int:
    """Return the width to lay out for: COLUMNS, else the terminal of stream, else 80 when piped."""
    columns = os.environ.get("COLUMNS", "")
    if columns.strip().isdigit() and int(columns) > 0:
        return max(int(columns), MIN_WIDTH)
    try:
        if stream.isatty():
            return max(os.get_terminal_size(stream.fileno()).columns, MIN_WIDTH)
    except (AttributeError, OSError, ValueError):
        pass  # a stream without a file descriptor (a test's StringIO, say)
    return FALLBACK_WIDTH


def truncate_start(text: str, width: int) -> str:
    """Return text cut to width by dropping its start (an ellipsis marks the cut): the end is what matters."""
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    return ELLIPSIS + text[len(text) - width + 1:]


def wrap(text: str, width: int, first: str = "", rest: str | None = None) -> list[str]:
    """Wrap text into lines of at most width: first prefixes line one, rest (default: spaces) the others."""
    rest = " " * len(first) if rest is None else rest
    lines: list[str] = []
    current: str | None = None
    for word in text.split():
        if current is not None and len(current) + 1 + len(word) <= width:
            current += " " + word
            continue
        if current is not None:
            lines.append(current)
        prefix = rest if current is not None else first
        current = prefix + truncate_start(word, max(width - len(prefix), 1))
    lines.append(first.rstrip() if current is None else current)
    return lines


@dataclasses.dataclass
class Column:
    """One column of a table: its header, its cells (one per row), alignment, and whether it may shrink."""

    header: str
    cells: list[str]
    right: bool = False  # right-aligned (counts)
    flexible: bool = False  # may be truncated from the start to fit the width
    styled: bool = False  # its cells are words a terminal may colour

    @property
    def natural(self) -> int:
        """Return the width that shows every cell and the header whole."""
        return max([len(self.header), *map(len, self.cells)])


def fixed_width(columns: Sequence[Column]) -> int:
    """Return the width of the columns that cannot shrink, gaps included."""
    return sum(c.natural for c in columns if not c.flexible) + len(GAP) * (len(columns) - 1)


def fits(columns: Sequence[Column], width: int, flexible_min: int) -> bool:
    """Say whether the columns fit in width with each flexible column at least flexible_min wide (or whole)."""
    room = sum(min(c.natural, flexible_min) for c in columns if c.flexible)
    return fixed_width(columns) + room <= width


def render(columns: Sequence[Column], width: int,
           paint: Callable[[Column, int, str], str] | None = None) -> list[str]:
    """Lay the columns out in at most width characters: a header line, then one line per row.

    Flexible columns share what the fixed ones leave, each up to its natural width, and their
    cells are cut from the start. paint(column, row, padded_text) may style a cell (row -1 is the
    header); it must not change the text's visible width.
    """
    flexible = [c for c in columns if c.flexible]
    room = width - fixed_width(columns)
    widths = {}
    for column in flexible:
        widths[id(column)] = max(min(column.natural, room // max(len(flexible), 1)), 1)
    rows = len(columns[0].cells) if columns else 0
    lines = []
    for row in range(-1, rows):
        parts = []
        for column in columns:
            text = column.header if row < 0 else column.cells[row]
            size = widths.get(id(column), column.natural)
            text = truncate_start(text, size) if column.flexible else text
            padded = text.rjust(size) if column.right else text.ljust(size)
            parts.append(paint(column, row, padded) if paint else padded)
        lines.append(GAP.join(parts).rstrip())
    return lines
