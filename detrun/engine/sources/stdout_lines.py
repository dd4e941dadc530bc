"""Stdout: what the script printed, line by line, as a terminal would finally show it, durations masked.

File descriptor 1 is routed through a pipe (a pseudo-terminal when stdout is a terminal, so the
script and its progress bars see `isatty()` exactly as without detrun); a thread passes every byte
on to the real stdout unchanged and renders the lines for the check:

- a line is what a terminal shows once it ends: `\\r` returns to the start of the line, `\\b` steps
  back, `ESC[K` erases to the end, other escape sequences (colours) are dropped. A progress bar
  that redraws itself a timing-dependent number of times therefore renders the same final line;
- the mask (MASK_RULES) replaces, in each line, durations (`12.3s`, `45ms/step`, `1:02:03`),
  rates (`3.4it/s`, `12 samples/s`), timestamps, the values of timing keys (`'train_runtime': 1.2`),
  Lightning's logger version (`v_num: 1`: it counts earlier runs in the directory) and memory
  addresses (`0x7f3a…`) with `…`; `replay --ignore-output REGEX` masks more.

One event at the end of the run: `stdout` — {"lines": [masked line, ...], "count": n, "rest": crc}
(at most MAX_LINES lines are kept; the rest is compared by a checksum). On replay the first line
that differs is a DIVERGED (an output check). Output written after detrun finishes (atexit
handlers) is not compared.
"""
from __future__ import annotations

import codecs
import os
import re
import sys
import threading
import zlib
from typing import TYPE_CHECKING, Any

from detrun.engine.line_mask import MASK, MASK_RULES, mask_line  # noqa: F401 - re-exported for check_criteria
from detrun.terminal_line import copy_window_size
from detrun.trace.registry import STDOUT as KIND  # the kind, its payload schema and version

if TYPE_CHECKING:
    from detrun.engine.session import Session

MAX_LINES = 20_000
MAX_LINE_CHARS = 400
_CSI = re.compile(r"\x1b\[[0-9;?]*([@-~])")


class TerminalLines:
    """Render a byte stream into the lines a terminal would finally show."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line: list[str] = []
        self._cursor = 0
        self._escape = ""
        self.lines: list[str] = []
        self.count = 0
        self.rest = 0  # crc32 chain of the lines beyond MAX_LINES

    def feed(self, data: bytes) -> None:
        """Consume bytes as they arrive."""
        for char in self._decoder.decode(data):
            if self._escape:
                self._escape += char
                if len(self._escape) == 2 and char != "[":
                    self._escape = ""  # a two-character escape (charset, keypad mode) shows nothing
                elif len(self._escape) > 2 and ("@" <= char <= "~" or len(self._escape) > 32):
                    self._apply_escape(self._escape)
                    self._escape = ""
            elif char == "\x1b":
                self._escape = char
            elif char == "\n":
                self._end_line()
            elif char == "\r":
                self._cursor = 0
            elif char == "\b":
                self._cursor = max(0, self._cursor - 1)
            elif char >= " " or char == "\t":
                if self._cursor < len(self._line):
                    self._line[self._cursor] = char
                else:
                    self._line.append(char)
                self._cursor += 1

    def _apply_escape(self, sequence: str) -> None:
        match = _CSI.fullmatch(sequence)
        if match is not None and match.group(1) == "K":
            mode = sequence[2:-1]
            if mode in ("", "0"):
                del self._line[self._cursor:]
            elif mode == "2":
                self._line = []
        # Colours and cursor moves between lines (tqdm's nested bars) do not change this line's text.

    def _end_line(self) -> None:
        line = "".join(self._line).rstrip()
        self._line, self._cursor = [], 0
        if len(self.lines) < MAX_LINES:
            self.lines.append(mask_line(line)[:MAX_LINE_CHARS])
        else:
            self.rest = zlib.crc32(mask_line(line).encode(), self.rest)
        self.count += 1

    def close(self) -> None:
        """End the last line if the stream did not."""
        self.feed(b"")
        if self._line:
            self._end_line()


class StdoutSource:
    """Tee file descriptor 1 through a pipe, render its lines, and record or compare them."""

    def __init__(self) -> None:
        self._session: Session | None = None
        self._saved_fd: int | None = None
        self._read_fd: int | None = None
        self._thread: threading.Thread | None = None
        self._lines = TerminalLines()
        self._done = threading.Event()
        self._pid = os.getpid()

    def install(self, session: Session) -> None:
        if self._session is not None:
            return
        try:
            os.fstat(1)
        except OSError:
            return  # no stdout at all: nothing to tee or compare
        self._session = session
        self._pid = os.getpid()
        sys.stdout.flush()
        self._saved_fd = os.dup(1)
        if os.isatty(1):
            import pty
            import tty

            self._read_fd, write_fd = pty.openpty()
            copy_window_size(self._saved_fd, write_fd)
            tty.setraw(write_fd)  # bytes pass unchanged; the real terminal does its own \n -> \r\n
        else:
            self._read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 1)
        os.close(write_fd)
        # A rank the script starts (Lightning's DDP) checks its own stdout: it writes to the real one.
        session.unteed_stdout_fd = self._saved_fd
        self._thread = threading.Thread(target=self._pump, name="detrun-stdout", daemon=True)
        self._thread.start()
        session.on_stop(self._finish)

    def uninstall(self) -> None:
        if self._session is not None:
            self._session.unteed_stdout_fd = None
        self._restore()
        self._session = None

    def _pump(self) -> None:
        """Pass every byte on to the real stdout and render it, until every writer has closed."""
        assert self._read_fd is not None and self._saved_fd is not None
        while True:
            try:
                data = os.read(self._read_fd, 65536)
            except OSError:  # a pseudo-terminal reports EIO once its last writer closed
                data = b""
            if not data:
                break
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(self._saved_fd, view):]
                except OSError:
                    break  # the real stdout went away (a closed pipe): keep rendering
            self._lines.feed(data)
        self._done.set()

    def _restore(self) -> None:
        """Put the real stdout back on file descriptor 1 (idempotent)."""
        if self._saved_fd is None or self._thread is None:
            return
        if os.getpid() != self._pid:
            # A forked child (a DataLoader worker): the pump thread stayed in the parent, and the
            # child's copy of Python's buffer is the parent's; give the child the real stdout, as
            # without detrun, and neither flush nor wait.
            os.dup2(self._saved_fd, 1)
            self._saved_fd = None
            return
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._saved_fd, 1)  # closes this process's write end of the pipe
        # Children that inherited the pipe may still hold it open; wait briefly for what is in flight.
        # The saved descriptor stays open: the pump keeps passing their output on until they close.
        self._done.wait(timeout=2.0)
        self._saved_fd = None

    def _finish(self) -> None:
        session = self._session
        if session is None:
            return
        self._restore()
        self._lines.close()
        lines = self._lines
        if session.recording:
            session.emit(KIND, {"lines": lines.lines, "count": lines.count, "rest": lines.rest})
            return
        recorded = session.take(KIND)
        if not isinstance(recorded, dict):
            return  # an incomplete recording ended before its output was complete
        extra = tuple(re.compile(p) for p in session.ignore_output)
        session.count_check("stdout lines", lines.count)
        message = compare_lines(recorded, lines.lines, lines.count, lines.rest, extra)
        if message is not None:
            session.diverge(KIND, message, check="output")


def compare_lines(recorded: dict[str, Any], lines: list[str], count: int, rest: int,
                  extra: tuple[re.Pattern[str], ...] = ()) -> str | None:
    """Return a message naming the first stdout line that differs from the recording, or None."""
    recorded_lines = [str(line) for line in recorded.get("lines", [])]
    for index, (old, new) in enumerate(zip(recorded_lines, lines)):
        if mask_line(old, extra) != mask_line(new, extra):
            return f"stdout line {index + 1} differs: recorded {old[:120]!r}, got {new[:120]!r}"
    recorded_count = recorded.get("count", len(recorded_lines))
    if recorded_count != count:
        return f"the replay printed {count} stdout lines, the recording {recorded_count}"
    if recorded.get("rest", 0) != rest:
        return f"stdout differs after line {MAX_LINES}"
    return None
