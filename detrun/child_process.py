"""The child interpreter as a process: its private scratch directory, its start, its death, and its exit status.

The child is tied to its parent (a pipe it watches) so that killing detrun never leaves a script
running that would later write a trace. Its exit status passes through as a shell sees it: 128+N
for a signal that cannot be re-raised, the signal itself otherwise.
"""
from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import re
import signal
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn

from detrun.bootstrap import BOOT_ENV_KEY, CHILD_CONFIG_VAR, LATE_CONFIG_FD_KEY

if TYPE_CHECKING:
    from detrun.progress_line import ProgressRelay


@contextlib.contextmanager
def scratch_directory() -> Iterator[str]:
    """Create this run's private scratch directory (mode 0700, a fresh random name in the temp dir).

    The recording's temporary trace and the DataLoader workers' segments and reports live here, not
    beside the output: a script that lists its own directory must not see them (it would record
    them, and every replay would diverge), and no trace may choose where detrun writes. This process
    holds a lock on it while it runs; the directory is removed at the end.
    """
    _sweep_stale_scratch()
    path = _make_private_directory(f"detrun-{os.getpid()}-")
    lock = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path
    finally:
        from detrun.engine.replay_backups import holds_backups

        if holds_backups(path):  # the recording's files a replay saved and could not put back: never delete
            print(f"detrun: warning: the recording's files a replay replaced are kept in {path}/replaced "
                  "(see its manifest.jsonl: each file's original path)", file=sys.stderr)
        else:
            _remove_tree(path)
        os.close(lock)


def _remove_tree(path: str) -> None:
    """Remove a directory this process made and everything in it, ignoring errors, as shutil.rmtree would.

    Without importing shutil: some 2 ms between the child's exit and ours (start-up). Symbolic
    links are removed, never followed; the directory is this user's own, mode 0700 (this run's,
    or a dead run's that _sweep_stale_scratch holds the lock of).
    """
    try:
        entries = list(os.scandir(path))
    except OSError:
        entries = []
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def _temporary_root() -> str:
    """Return the directory for scratch directories: tempfile.gettempdir()'s choice, without importing tempfile.

    Start-up: tempfile (and random, shutil with it) costs some 5 ms before the child can start.
    Mirrors tempfile._candidate_tempdir_list / _get_default_tempdir (Python 3.x) on POSIX: TMPDIR,
    TEMP, TMP, then /tmp, /var/tmp, /usr/tmp, then the current directory; the first writable one.
    """
    candidates = [os.environ.get(name) for name in ("TMPDIR", "TEMP", "TMP")]
    for directory in [*candidates, "/tmp", "/var/tmp", "/usr/tmp"]:
        if directory and os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK):
            return os.path.abspath(directory)
    return os.getcwd()

def _make_private_directory(prefix: str) -> str:
    """Create a directory with a fresh random name under _temporary_root(), mode 0700 (as tempfile.mkdtemp)."""
    root = _temporary_root()
    while True:
        path = os.path.join(root, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue

def _sweep_stale_scratch() -> None:
    """Remove scratch directories a killed detrun left behind (`kill -9` leaves nobody to do it).

    Only ours, only real directories, and only when both say the owner is gone: its pid does not
    exist and its lock is free. The lock covers a pid from another pid namespace sharing /tmp; the
    pid covers the instant between an owner's mkdtemp and its flock.
    """
    directory = _temporary_root()
    try:
        names = [n for n in os.listdir(directory) if re.fullmatch(r"detrun-[0-9]+-[A-Za-z0-9_]+", n)]
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        try:
            os.kill(int(name.split("-")[1]), 0)
            continue  # the owner lives
        except ProcessLookupError:
            pass
        except (OSError, ValueError, OverflowError):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_uid != os.getuid():
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            from detrun.engine.replay_backups import holds_backups

            if holds_backups(path):
                continue  # a killed replay's saved files: the user's data, never swept
            _remove_tree(path)
        except OSError:
            continue  # locked: a live run in another pid namespace
        finally:
            os.close(fd)

def run_child(config: dict[str, Any], overrides: dict[str, str | None],
              late_config: Callable[[], dict[str, Any]] | None = None, boot_env: dict[str, str] | None = None) -> int:
    """Run the child interpreter with the session config; return its exit status as a shell sees it.

    `boot_env` (bootstrap.environment's) goes in the config, not the child's environment: the
    child hands it to the processes the script starts (detrun._child).

    `late_config` computes a part of the config the child needs only once its interpreter is up
    (a recording's whole session config and environment fingerprint): it runs while the child
    starts, and its result goes over a pipe (bootstrap.LATE_CONFIG_FD_KEY), so start-up does not
    wait for it. If it raises, the child is killed before it read the pipe, and the error passes on.
    """
    child_env = dict(os.environ)
    for key, value in overrides.items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value
    # The child dies with this process: it watches a pipe whose only writer is here, and the kernel
    # closes it whatever kills us (detrun._child.watch_parent).
    watch, keep_alive = os.pipe()
    pass_fds = [watch]
    config = {**config, "parent_pipe": watch, BOOT_ENV_KEY: boot_env or {}}
    # A terminal's progress line is drawn here, by the one process that sees every byte the script
    # writes to it (detrun.progress_line says why).
    relay = None
    if not config.get("quiet") and os.isatty(2):  # imported only then: its threads and selectors cost start-up
        from detrun.progress_line import PROGRESS_FD_KEY, ProgressRelay

        relay = ProgressRelay.for_terminal(quiet=False)
        if relay is not None:
            pass_fds.append(relay.progress_write)
            config = {**config, PROGRESS_FD_KEY: relay.progress_write}
    late_read = late_write = -1
    if late_config is not None:
        late_read, late_write = os.pipe()
        pass_fds.append(late_read)
        config = {**config, LATE_CONFIG_FD_KEY: late_read}
    config = {**config, "parent_pid": os.getpid()}
    child_env[CHILD_CONFIG_VAR] = json.dumps(config)
    try:
        process = ChildProcess.spawn([sys.executable, "-m", "detrun._child"], child_env, pass_fds,
                                     stdout=relay.child_stdout if relay else None,
                                     stderr=relay.child_stderr if relay else None)
    except BaseException:
        if relay is not None:
            relay.stop()
        if late_write >= 0:
            os.close(late_write)
        os.close(keep_alive)
        raise
    finally:
        os.close(watch)
        if late_read >= 0:
            os.close(late_read)
    if late_config is not None:
        # Before the relay starts: what it prints comes first, and the child waits for it.
        try:
            late = json.dumps(late_config()).encode()
        except BaseException:
            # A refused input (or a bug): the child has not run a line of the user's yet. Stop it
            # while the pipe is still open, so that it never reads a config that did not come and
            # the launcher's error is the only word.
            process.kill()
            process.wait()
            os.close(late_write)
            if relay is not None:
                relay.stop()
            os.close(keep_alive)
            raise
        _send_late_config(late_write, late)

    def forward(signum: int, _frame: Any) -> None:
        process.send_signal(signum)

    # Ctrl-C reaches the whole foreground process group, so the child already has it; the parent
    # only has to outlive the child to finish the trace (and to erase the progress line at once, so
    # that `^C` and the traceback start on a clean line). kill/SIGTERM is aimed at us: pass it on.
    handlers: dict[signal.Signals, Any] = {signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: forward,
                                           signal.SIGHUP: forward}
    if relay is not None:
        relay.started()
        handlers.update(_relay_handlers(relay))
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        status = process.wait()
    finally:
        if relay is not None:
            relay.stop()  # still under our handlers: a second Ctrl-C here is no traceback of detrun's
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(keep_alive)
    return status

def _send_late_config(fd: int, late: bytes) -> None:
    """Write the late part of the child's config to the pipe `fd`, and close it."""
    with open(fd, "wb") as pipe:
        try:
            pipe.write(late)
        except BrokenPipeError:
            pass  # the child died first; its status says how

def _relay_handlers(relay: ProgressRelay) -> dict[signal.Signals, Callable[[int, Any], None]]:
    """Return the launcher's signal handlers while the relay owns the terminal."""
    return {signal.SIGINT: lambda _signum, _frame: relay.interrupt(),
            signal.SIGWINCH: lambda _signum, _frame: relay.resize()}

class ChildProcess:
    """A child started with os.posix_spawn: subprocess.Popen's wait, send_signal and kill, without its import.

    Start-up: subprocess (and ctypes for a preexec_fn) cost some 8 ms before the child could start.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    @classmethod
    def spawn(cls, argv: list[str], env: dict[str, str], pass_fds: list[int], *, stdout: int | None = None,
              stderr: int | None = None) -> ChildProcess:
        """Start `argv` with `env`, handing it `pass_fds` (and `stdout`/`stderr` as its 1 and 2)."""
        for fd in pass_fds:
            os.set_inheritable(fd, True)
        actions = [(os.POSIX_SPAWN_DUP2, fd, target) for fd, target in ((stdout, 1), (stderr, 2)) if fd is not None]
        try:
            # setsigdef: as Popen's restore_signals, the signals Python ignores start with their defaults.
            pid = os.posix_spawn(argv[0], argv, env, file_actions=actions,
                                 setsigdef=[getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ")
                                            if hasattr(signal, name)])
        finally:
            for fd in pass_fds:  # not inherited by anything else this process starts (git, say)
                os.set_inheritable(fd, False)
        return cls(pid)

    def wait(self) -> int:
        """Wait for the child to end; return its status as Popen.returncode (-N: killed by signal N)."""
        if self.returncode is None:
            try:
                _pid, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                # As Popen.wait: SIGCHLD ignored (inherited so) reaps children unseen; the status is lost.
                self.returncode = 0
        return self.returncode

    def send_signal(self, signum: int) -> None:
        """Send `signum` to the child, unless it has been waited for (its pid may be another's by now)."""
        if self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """Send SIGKILL to the child."""
        self.send_signal(signal.SIGKILL)

def signal_name(signum: int) -> str:
    """Return a signal's name (SIGKILL), or its number for one Python has no name for."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"

# Signals whose default action dumps core: re-raised in the parent only to report the child's death,
# so the parent's own (useless) core dump is switched off first.
_CORE_SIGNALS = {getattr(signal, name) for name in ("SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE",
                                                    "SIGSEGV", "SIGSYS", "SIGXCPU", "SIGXFSZ") if hasattr(signal, name)}

def exit_like(status: int) -> NoReturn:
    """Exit the parent as the child ended: its status, or death by the same signal.

    A catchable signal is re-raised, so a caller's waitpid sees the same death; SIGKILL and SIGSTOP
    cannot be re-raised without losing detrun's own exit, so those exit with 128+N, which is what a
    shell reports for a process they killed.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if status >= 0:
        # No user code runs in this process and nothing of it is left to write: the interpreter's
        # teardown (its modules, the collector's passes over detrun's own objects) would only add
        # some 2 ms to every run's end (start-up).
        os._exit(status)
    gc.freeze()  # the collector's passes at exit would only walk detrun's own objects
    signum = -status
    if signum not in (signal.SIGKILL, signal.SIGSTOP):
        try:
            if signum in _CORE_SIGNALS:
                import resource

                resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
            signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
            os.kill(os.getpid(), signum)
        except (OSError, ValueError):
            pass  # a signal this process cannot take: fall through to 128+N
    sys.exit(128 + signum)


__all__ = ["CHILD_CONFIG_VAR", "exit_like", "run_child", "scratch_directory", "signal_name"]
