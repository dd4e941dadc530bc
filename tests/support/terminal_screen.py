"""Run a command on a pseudo-terminal and render what it wrote, for tests of what a user's terminal shows."""
from __future__ import annotations

import codecs
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from typing import Callable

_CSI = re.compile(r"\x1b\[([0-9;?]*)([@-~])")


class Screen:
    """A minimal terminal: lines and a cursor; `\\r`, `\\n`, `\\b`, `ESC[K`, `ESC[2K`, `ESC[A`; colours ignored.

    Every state a line passes through is kept in `seen`, so a test can ask whether two texts were
    ever on the same line at the same time, not only at the end.
    """

    def __init__(self) -> None:
        self.lines: list[list[str]] = [[]]
        self.row = 0
        self.col = 0
        self.seen: list[str] = []
        self.raw = bytearray()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, data: bytes) -> None:
        """Apply bytes as a terminal would; snapshot the current line after every change."""
        self.raw += data
        text = self._pending + self._decoder.decode(data)
        self._pending = ""
        index = 0
        while index < len(text):
            char = text[index]
            if char == "\x1b":
                match = _CSI.match(text, index)
                if match is None:
                    end = text.find("\x07", index) if text.startswith("\x1b]", index) else index + 1
                    if end < 0 or index + 1 >= len(text) or text.startswith("\x1b[", index):
                        self._pending = text[index:]  # an escape split across reads
                        return
                    index = end + 1  # an OSC (window title) or a two-character escape: nothing shown
                    continue
                self._csi(match.group(1), match.group(2))
                index = match.end()
            elif char == "\n":
                self._snapshot()
                self.row += 1
                if self.row == len(self.lines):
                    self.lines.append([])
                index += 1
            elif char == "\r":
                self.col = 0
                index += 1
            elif char == "\b":
                self.col = max(0, self.col - 1)
                index += 1
            elif char >= " ":
                line = self.lines[self.row]
                line.extend(" " * (self.col - len(line)))
                if self.col < len(line):
                    line[self.col] = char
                else:
                    line.append(char)
                self.col += 1
                index += 1
                if index == len(text) or text[index] in "\r\n\x1b\b":
                    self._snapshot()
            else:
                index += 1  # other controls (the bell) show nothing
        self._snapshot()

    def _csi(self, params: str, final: str) -> None:
        line = self.lines[self.row]
        if final == "K":
            if params in ("", "0"):
                del line[self.col:]
            elif params == "2":
                line.clear()
            self._snapshot()
        elif final == "A":
            self.row = max(0, self.row - int(params or "1"))

    def _snapshot(self) -> None:
        text = "".join(self.lines[self.row]).rstrip()
        if not self.seen or self.seen[-1] != text:
            self.seen.append(text)

    def text(self) -> list[str]:
        """Return the lines the screen finally shows."""
        return ["".join(line).rstrip() for line in self.lines]


def run_on_terminal(args: list[str], *, cwd: str, env: dict[str, str], timeout: float = 120,
                    on_output: Callable[[Screen, Callable[[bytes], None]], None] | None = None,
                    columns: int = 100) -> tuple[Screen, int]:
    """Run args with a pseudo-terminal as controlling terminal, stdin, stdout and stderr; return the screen.

    on_output(screen, type_keys) is called after each read; type_keys writes to the terminal as a
    user typing would (b"\\x03" is Ctrl-C, which the terminal turns into SIGINT for the process group).
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(args, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                               preexec_fn=controlling_terminal)
    os.close(slave)
    screen = Screen()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once every writer has closed the terminal
                break
            if not data:
                break
            screen.feed(data)
            if on_output is not None:
                on_output(screen, lambda keys: os.write(master, keys))
        else:
            raise AssertionError(f"{args} did not finish in {timeout} s; the screen:\n" + "\n".join(screen.text()))
        return screen, process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)


def stderr_through_a_terminal(argv: list[str], cwd: object, timeout: float = 300) -> str:
    """Run argv with stderr on a pseudo-terminal (stdout discarded); return what it wrote there."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=slave, env=env)  # type: ignore[arg-type]
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO once the child side is closed
            break
        if not data:
            break
        chunks.append(data)
    process.wait(timeout=timeout)
    os.close(master)
    return b"".join(chunks).decode(errors="replace")
