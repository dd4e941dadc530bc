"""The terminal's current line, followed just far enough to know when something may be drawn on it.

The progress relay (detrun.progress_line) draws detrun's line only on an empty line with the
cursor at its start, so that erasing it later (`\\r` + `ESC[K`) gives the script back exactly
the terminal it left. Anything it does not follow (cursor moves between lines: tqdm's nested
bars) counts as not empty until the next newline.
"""
from __future__ import annotations

import codecs


class LineTracker:
    """Follow the terminal's current line just far enough to know whether it is empty, cursor at its start."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._cursor = 0
        self._ink: set[int] = set()  # columns holding a character other than a space
        self._lost = False  # a cursor move we do not follow (nested bars): unknown until the next newline
        self._escape = ""

    @property
    def blank(self) -> bool:
        """Return whether the current line shows nothing and the cursor is at its start."""
        return not self._lost and not self._escape and self._cursor == 0 and not self._ink

    def feed(self, data: bytes) -> None:
        """Consume bytes in the order the terminal gets them."""
        newline = data.rfind(b"\n")
        if newline >= 0:
            # Only the last line matters, so a flood of output costs one line's work per read. A
            # newline byte is never inside a UTF-8 character, and it ends any escape sequence too.
            self._decoder.reset()
            self._cursor, self._ink, self._lost, self._escape = 0, set(), False, ""
            data = data[newline + 1:]
        for char in self._decoder.decode(data):
            if self._escape:
                self._escape_char(char)
            elif char == "\x1b":
                self._escape = char
            elif char == "\n":
                self._cursor, self._ink, self._lost = 0, set(), False
            elif char == "\r":
                self._cursor = 0
            elif char == "\b":
                self._cursor = max(0, self._cursor - 1)
            elif char == "\t":
                self._cursor = (self._cursor // 8 + 1) * 8
            elif char >= " " and char != "\x7f":
                if char == " ":
                    self._ink.discard(self._cursor)
                else:
                    self._ink.add(self._cursor)
                self._cursor += 1

    def _escape_char(self, char: str) -> None:
        sequence = self._escape + char
        if len(sequence) == 2:
            if char in "[]":
                self._escape = sequence
                return
            self._escape = ""
            if char in "78DEM":  # restore cursor, index, next line, reverse index: the cursor moved
                self._lost = True
            return
        if sequence[1] == "]":  # OSC (a window title): ends with BEL or ESC backslash, shows nothing
            self._escape = "" if char == "\x07" or sequence.endswith("\x1b\\") or len(sequence) > 512 else sequence
            return
        if not ("@" <= char <= "~") and len(sequence) <= 32:
            self._escape = sequence
            return
        self._escape = ""
        params = sequence[2:-1]
        if char == "m":
            return  # colours
        if char == "K":
            if params in ("", "0"):
                self._ink = {column for column in self._ink if column < self._cursor}
            elif params == "1":
                self._ink = {column for column in self._ink if column > self._cursor}
            elif params == "2":
                self._ink = set()
            return
        self._lost = True  # cursor moves, line or screen erases: not worth following


def copy_window_size(source_fd: int, target_fd: int) -> None:
    """Give a pseudo-terminal a terminal's size, so progress bars draw the same width."""
    try:
        import fcntl
        import termios

        size = fcntl.ioctl(source_fd, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(target_fd, termios.TIOCSWINSZ, size)
    except OSError:
        pass


__all__ = ["LineTracker", "copy_window_size"]
