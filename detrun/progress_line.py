"""The progress line: drawn by the launcher, only where it cannot share a line with the script's output.

The script's stdout and stderr and the progress line all end up on one terminal, and only the
process that writes every byte to it can know what the terminal's current line holds. The child
cannot: tqdm writes its bar to fd 2, which went straight to the terminal. So, when stderr is a
terminal and progress is wanted, the launcher (this module, in the parent process) puts the
child's fd 2, and its fd 1 when stdout is the same terminal, on pseudo-terminals of its own (the
script still sees `isatty()` and the terminal's size; a stdout pipe, which `| tee` may bring back
to the terminal, goes through a pipe of its own) and passes every byte on in order, while
the child sends the progress text over a pipe (PROGRESS_FD_KEY in its config) at most twice a
second. The relay draws it only

- when the script has written nothing to the terminal for QUIET_SECONDS, and
- when the terminal's current line is empty with the cursor at its start (the script's last
  line ended): a `\\r`-style progress bar of the script's own, or a half-written line, is never
  drawn over, so detrun's line is simply not shown while tqdm's bar is up;

and erases it (`\\r` + `ESC[K`) before the script's next byte reaches the terminal. Living in the
parent has two more uses: a child that dies (a segfault, `os._exit`) loses none of its stderr,
because the relay outlives it; and on Ctrl-C (the terminal signals the parent too) the relay
erases the line at once, and anyway before the script's traceback, so the traceback starts on a
clean line. After a Ctrl-C no progress line is drawn again. (A Ctrl-C during the script's own
tqdm bar glues `^CTraceback` to the bar exactly as plain `python` does: that line is the script's.)

Before detrun's own lines (warnings, the summary, the verdict) the child writes FRESH_LINE into
its stderr; the relay removes it and ends the script's half-written line, if any, so each of
detrun's lines is a line of its own. The marker travels in the stream itself because only that
keeps it in order with the script's last bytes.

When stderr is not a terminal, or with -q, there is no relay and no progress line at all: the
child's descriptors are the launcher's own, exactly as before. In-process blocks (detrun.api)
have no launcher and show no progress line. Limits: stdout and stderr come through two channels,
so what the script writes to both in the same instant may reach the terminal in either order (as
it already could through the child's stdout tee); the relay's pseudo-terminals follow a resized
terminal (SIGWINCH), the stdout tee's inside the child does not.
"""
from __future__ import annotations

import os
import select
import selectors
import stat
import sys
import threading
import time

from detrun.terminal_line import LineTracker, copy_window_size

PROGRESS_FD_KEY = "progress_fd"
FRESH_LINE = b"\x1b]detrun;fresh-line\x07"  # an OSC sequence: a terminal it leaked to would show nothing
QUIET_SECONDS = 1.0  # the script must have been this quiet on the terminal before the line is drawn
_POLL_SECONDS = 0.2
_CATCH_UP_SECONDS = 0.05
_DRAIN_SECONDS = 2.0  # after the child exits, how long its children may still hold the terminal
_ERASE = b"\r\x1b[K"


class ProgressRelay:
    """Own the terminal for the child: pass its output on, draw and erase the progress line."""

    def __init__(self) -> None:
        self._terminal = 2
        self._lock = threading.Lock()
        self._tracker = LineTracker()
        self._text = ""  # the latest progress text from the child ("" hides the line)
        self._shown = ""  # the text on the terminal now
        self._last_output = float("-inf")
        self._interrupted = False
        self._resized = False
        self._stopping_at: float | None = None
        self._fds: list[int] = []
        self._streams: dict[int, int] = {}  # pseudo-terminal master -> the launcher's descriptor it feeds
        self._held = b""  # stderr bytes that may be the start of FRESH_LINE
        self._pending_text = b""  # a progress message not complete yet
        self._open_streams: set[int] = set()
        self.child_stdout: int | None = None
        try:
            self.child_stderr = self._open_pty(2)
            self._open_stdout()
            self._progress_read, self.progress_write = os.pipe()
            self._fds += [self._progress_read, self.progress_write]
            self._wake_read, self._wake_write = os.pipe()
            self._fds += [self._wake_read, self._wake_write]
        except OSError:
            self._close_all()
            raise
        os.set_blocking(self._wake_write, False)
        self._thread = threading.Thread(target=self._pump, name="detrun-progress", daemon=True)

    def _open_stdout(self) -> None:
        stdout = _stat(1)
        if stdout is not None and os.isatty(1) and stdout.st_rdev == os.fstat(2).st_rdev:
            self.child_stdout = self._open_pty(1)  # the same terminal: the relay must see these bytes too
        elif stdout is not None and (stat.S_ISFIFO(stdout.st_mode) or stat.S_ISSOCK(stdout.st_mode)):
            # A pipe may still end up on this terminal (`detrun record train.py | tee log`): the relay
            # passes these bytes on too, so that it knows when the script writes. A file (`> log`)
            # cannot, and is left alone: the script writing to it keeps no progress line away.
            self.child_stdout = self._open_pipe(1)

    @classmethod
    def for_terminal(cls, quiet: bool) -> ProgressRelay | None:
        """Return a relay when stderr is a terminal and progress is wanted, else None."""
        if quiet or not os.isatty(2):
            return None
        try:
            return cls()
        except OSError:
            return None  # no pseudo-terminals here: no progress line, the output goes straight through

    def _open_pty(self, target: int) -> int:
        import pty
        import tty

        master, slave = pty.openpty()
        self._fds += [master, slave]
        copy_window_size(target, slave)
        tty.setraw(slave)  # bytes pass unchanged; the real terminal does its own \n -> \r\n
        self._streams[master] = target
        return slave

    def _open_pipe(self, target: int) -> int:
        read, write = os.pipe()
        self._fds += [read, write]
        self._streams[read] = target
        return write

    def started(self) -> None:
        """Close the child's ends here, once it holds them, and start passing its output on."""
        for fd in (self.child_stderr, self.child_stdout, self.progress_write):
            if fd is not None:
                os.close(fd)
                self._fds.remove(fd)
        self._thread.start()

    def interrupt(self) -> None:
        """Erase the line at once and never draw it again (a signal handler: no locks here)."""
        self._interrupted = True
        self._wake()

    def resize(self) -> None:
        """Give the pseudo-terminals the real terminal's new size (a signal handler)."""
        self._resized = True
        self._wake()

    def stop(self) -> None:
        """After the child exited: pass on what its children still write for a moment, erase, close."""
        self._stopping_at = time.monotonic() + _DRAIN_SECONDS
        self._wake()
        if self._thread.is_alive():
            self._thread.join(_DRAIN_SECONDS + 1.0)
        with self._lock:
            self._flush_held()
            self._erase()
            if not self._tracker.blank:
                self._write(2, b"\n")  # a child that died mid-line: the launcher's own report starts afresh
        self._close_all()

    def _close_all(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"!")
        except OSError:
            pass  # full: a wake-up is already pending

    def _pump(self) -> None:
        selector = selectors.DefaultSelector()
        for master in self._streams:
            selector.register(master, selectors.EVENT_READ)
        selector.register(self._progress_read, selectors.EVENT_READ)
        selector.register(self._wake_read, selectors.EVENT_READ)
        self._open_streams = set(self._streams)
        failures = 0
        try:
            while self._open_streams and failures < 100:
                if self._stopping_at is not None and time.monotonic() >= self._stopping_at:
                    break
                try:
                    self._pump_once(selector)
                except Exception:  # noqa: BLE001 - a bug here must not stop the script's output
                    failures += 1
                    self._interrupted = True  # but it ends the progress line
        finally:
            selector.close()

    def _pump_once(self, selector: selectors.BaseSelector) -> None:
        """Wait for output, progress text or a wake-up (at most _POLL_SECONDS); pass it on; draw or erase."""
        stderr_read = False
        for key, _ in selector.select(_POLL_SECONDS):
            fd = key.fd
            stderr_read = stderr_read or self._streams.get(fd) == 2
            try:
                data = os.read(fd, 65536)
            except OSError:  # a pseudo-terminal reports EIO once its last writer closed
                data = b""
            if fd in self._streams:
                if not data:
                    selector.unregister(fd)
                    self._open_streams.discard(fd)
                else:
                    with self._lock:
                        self._forward(self._streams[fd], data)
            elif fd == self._progress_read:
                *texts, self._pending_text = (self._pending_text + data).split(b"\n")
                for text in texts:  # each in turn: a short run's only update may come with the "" after it
                    self._text = text.decode(errors="replace")
                    with self._lock:
                        self._refresh()
                if not data:
                    selector.unregister(fd)
                    self._text = ""  # the child is gone: nothing more to show
            # the wake pipe needs nothing but the read
        with self._lock:
            if self._held and not stderr_read:
                self._flush_held()  # bytes that looked like the marker's start, and were not
            if self._resized:
                self._resized = False
                for master, target in self._streams.items():
                    copy_window_size(target, master)
            self._refresh()

    def _refresh(self) -> None:
        if self._interrupted or not self._text:
            self._erase()
        else:
            self._draw()

    def _forward(self, target: int, data: bytes) -> None:
        """Pass the script's bytes on, the progress line erased first."""
        self._erase()
        if target == 2:
            data, self._held = self._held + data, b""
            while FRESH_LINE in data:
                before, data = data.split(FRESH_LINE, 1)
                self._write(target, before)
                self._catch_up_stdout()
                if not self._tracker.blank:
                    self._write(target, b"\n")
            self._held = _marker_prefix_at_end(data)
            data = data[:len(data) - len(self._held)]
        self._write(target, data)
        if data:
            self._last_output = time.monotonic()

    def _catch_up_stdout(self) -> None:
        """Pass on the script's last stdout bytes still on their way, so detrun's line comes after them.

        The child finished its stdout before writing the marker, but the two pseudo-terminals are
        read in whatever order they become ready; a short wait here keeps `done` above the verdict.
        """
        masters = [master for master, target in self._streams.items() if target == 1]
        for _ in range(64):
            if not masters or not select.select(masters, [], [], _CATCH_UP_SECONDS)[0]:
                return
            try:
                data = os.read(masters[0], 65536)
            except OSError:
                return
            if not data:
                return
            self._write(1, data)
            self._last_output = time.monotonic()

    def _flush_held(self) -> None:
        if self._held:
            self._write(2, self._held)
            self._held = b""
            self._last_output = time.monotonic()

    def _write(self, target: int, data: bytes) -> None:
        try:
            self._tracker.feed(data)
        except Exception:  # noqa: BLE001 - a bug here must never hold up the script's output
            self._interrupted = True  # no more progress line: the relay no longer knows the line
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(target, view):]
            except OSError:
                return  # the terminal went away: keep reading, so the script never blocks on us

    def _draw(self) -> None:
        if self._text == self._shown or time.monotonic() - self._last_output < QUIET_SECONDS:
            return
        if self._held or not self._tracker.blank:
            return
        try:
            width = os.get_terminal_size(self._terminal).columns or 80  # 0: a terminal that does not say
        except OSError:
            width = 80
        line = self._text[:max(width - 1, 10)]  # a line that wrapped could not be erased with one \r
        try:
            os.write(self._terminal, b"\r" + line.encode() + b"\x1b[K")
        except OSError:
            return
        self._shown = self._text

    def _erase(self) -> None:
        if self._shown:
            try:
                os.write(self._terminal, _ERASE)
            except OSError:
                pass
            self._shown = ""


class ProgressPipe:
    """The child's end: send the launcher the progress text, and mark where detrun's own lines start."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self._stderr = _identity(2)  # the launcher's pseudo-terminal, while the script leaves fd 2 alone

    def send(self, text: str) -> None:
        """Hand the launcher the text to show ("" hides the line); it decides when to draw it."""
        if self._fd is None:
            return
        try:
            os.write(self._fd, text.encode() + b"\n")
        except BlockingIOError:
            pass  # the launcher is behind: this update is dropped, the next one comes
        except OSError:
            self._fd = None  # the launcher is gone

    def fresh_line(self) -> None:
        """Hide the line and have the launcher end the script's unfinished line before detrun's next one."""
        self.send("")
        # In the stream itself, to stay in order with the script's last bytes; not when the script
        # pointed fd 2 elsewhere (a log file must not get the marker).
        if _identity(2) != self._stderr:
            return
        try:
            sys.stderr.flush()
            os.write(2, FRESH_LINE)
        except (OSError, ValueError):
            pass


def _stat(fd: int) -> os.stat_result | None:
    try:
        return os.fstat(fd)
    except OSError:
        return None  # closed


def _identity(fd: int) -> tuple[int, int] | None:
    """Return what a file descriptor refers to (device and inode), or None if it is closed."""
    info = _stat(fd)
    return None if info is None else (info.st_dev, info.st_ino)


def _marker_prefix_at_end(data: bytes) -> bytes:
    """Return the tail of data that could be the start of FRESH_LINE (held until more comes)."""
    for size in range(min(len(FRESH_LINE) - 1, len(data)), 0, -1):
        if FRESH_LINE.startswith(data[-size:]):
            return data[-size:]
    return b""


__all__ = ["FRESH_LINE", "PROGRESS_FD_KEY", "QUIET_SECONDS", "ProgressPipe", "ProgressRelay"]
