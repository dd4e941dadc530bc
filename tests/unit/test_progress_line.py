"""The progress relay's view of the terminal line: when the line is empty, and the fresh-line marker."""
from __future__ import annotations

import pytest

from detrun.progress_line import FRESH_LINE, _marker_prefix_at_end
from detrun.terminal_line import LineTracker


def _after(*chunks: bytes) -> LineTracker:
    tracker = LineTracker()
    for chunk in chunks:
        tracker.feed(chunk)
    return tracker


@pytest.mark.parametrize("chunks", [
    (),
    (b"epoch 1 loss 0.25\n",),
    (b"\x1b[32mok\x1b[0m\n", b"\x1b[0m"),  # a colour reset after the newline moves nothing
    (b"  50%|#####     | 5/10\r", b"                      \r"),  # tqdm(leave=False) clears its bar
    (b"half a line", b"\r\x1b[2K"),
    (b"half a line", b"\r\x1b[K"),
    (b"\x1b]0;window title\x07",),
    ("caf\u00e9 ".encode()[:4], "caf\u00e9 ".encode()[4:], b"\n"),  # a character split across reads
])
def test_the_line_is_blank(chunks: tuple[bytes, ...]) -> None:
    assert _after(*chunks).blank


@pytest.mark.parametrize("chunks", [
    (b"loading",),  # print("loading", end="")
    (b"  50%|#####     | 5/10 [00:01<00:01]",),  # tqdm's bar, cursor at its end
    (b"  50%|#####     | 5/10 [00:01<00:01]\r",),  # cursor at the start, but the bar is still there
    (b"    ",),  # blank, but the cursor is not at the start
    (b"\n\x1b[A",),  # a nested bar moved the cursor up: we do not follow it
    (b"\x1b[",),  # an escape sequence not finished yet
    (b"done\n", b"x"),
])
def test_the_line_is_not_blank(chunks: tuple[bytes, ...]) -> None:
    assert not _after(*chunks).blank


def test_a_newline_forgets_a_lost_cursor() -> None:
    assert _after(b"\x1b[A", b"bar", b"\n").blank


def test_a_marker_split_across_reads_is_held_back() -> None:
    assert _marker_prefix_at_end(b"text" + FRESH_LINE[:5]) == FRESH_LINE[:5]
    assert _marker_prefix_at_end(b"text\x1b") == b"\x1b"
    assert _marker_prefix_at_end(b"text\x1b[32m") == b""
    assert _marker_prefix_at_end(b"plain text\n") == b""
