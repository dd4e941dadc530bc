"""Run a script or `-m module` as `__main__`, exactly as `python` would.

Modelled on coverage.py's PyRunner: the user's code sees the `sys.argv`, `sys.path[0]`,
`__main__` module, `__file__`, `__spec__` and `__loader__` that plain `python` gives it; it is
compiled with `dont_inherit=True` so detrun's own `from __future__` flags never leak into it;
its tracebacks carry none of detrun's frames; and its exit status passes through unchanged.
"""
from __future__ import annotations

import importlib.machinery
import io
import os
import signal
import sys
import types
from typing import Callable, NamedTuple

from detrun.errors import DetrunError, ScriptNotFound


# NamedTuples, not dataclasses: `detrun record` reaches its child without importing dataclasses
# (and inspect with it, ~7 ms of start-up).
class Target(NamedTuple):
    """What to run: a script path or a module name, and its arguments."""

    name: str
    args: tuple[str, ...] = ()
    is_module: bool = False

    @property
    def display(self) -> str:
        """Return the target as a user would type it after `python`."""
        return f"-m {self.name}" if self.is_module else self.name


class ResolvedTarget(NamedTuple):
    """A target whose source file has been found."""

    target: Target
    path: str  # absolute path of the file whose code runs as __main__
    sha256: str


def _find_module_file(name: str) -> str:
    """Locate a module's source file as `python -m` would, without executing any package code.

    The parent process only needs the file (to hash it); importing parent packages here would run
    the user's `__init__` twice. The child resolves it again with runpy, which does import them.
    """
    search: list[str] | None = [os.getcwd(), *sys.path]  # python -m searches the cwd first
    spec = None
    parts = name.split(".")
    for depth, part in enumerate(parts):
        if not part.isidentifier():
            raise ScriptNotFound(f"no module named {name!r}")
        spec = importlib.machinery.PathFinder.find_spec(part if depth == 0 else ".".join(parts[:depth + 1]), search)
        if spec is None:
            raise ScriptNotFound(f"no module named {name!r}")
        search = list(spec.submodule_search_locations or []) or None
        if depth < len(parts) - 1 and search is None:
            raise ScriptNotFound(f"no module named {name!r} ({'.'.join(parts[:depth + 1])} is not a package)")
    assert spec is not None
    if spec.submodule_search_locations is not None:  # a package runs its __main__, as runpy does
        if name.endswith(".__main__") or name == "__main__":
            raise ScriptNotFound(f"cannot use package {name!r} as __main__")
        return _find_module_file(name + ".__main__")
    if spec.origin is None or not os.path.isfile(spec.origin):
        raise ScriptNotFound(f"module {name!r} has no source file to run")
    return spec.origin


def resolve(target: Target) -> ResolvedTarget:
    """Find the target's file and hash it; raise ScriptNotFound with one clear line if absent."""
    from detrun.small_sha256 import sha256_hex  # start-up: the child imports this module and hashes nothing

    path = locate(target)
    try:
        with open(path, "rb") as f:
            digest = sha256_hex(f.read())
    except OSError as exc:
        raise ScriptNotFound(f"cannot read {target.name}: {exc.strerror}") from None
    return ResolvedTarget(target, path, digest)


def locate(target: Target) -> str:
    """Return the absolute path of the target's file; raise ScriptNotFound if it is absent or unreadable."""
    if target.is_module:
        path = _find_module_file(target.name)
    else:
        path = target.name
        if os.path.isdir(path):
            path = os.path.join(path, "__main__.py")
        if not os.path.isfile(path):
            raise ScriptNotFound(f"no such script: {target.name}")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ScriptNotFound(f"cannot read {target.name}: {exc.strerror}") from None
    return os.path.abspath(path)


def python_abspath(name: str) -> str:
    """Return a script path made absolute as CPython's _Py_abspath does: the cwd prepended, nothing normalised."""
    return name if os.path.isabs(name) else os.path.join(os.getcwd(), name)


def compile_script(path: str) -> types.CodeType:
    """Compile a script's source as `python` does before running it (a SyntaxError is the script's)."""
    return compile(_read_source(path), path, "exec", dont_inherit=True)


def syntax_error_of(resolved: ResolvedTarget) -> SyntaxError | None:
    """Return the SyntaxError the target's main file stops at before running anything, or None."""
    name = resolved.target.name
    plain_file = not resolved.target.is_module and not os.path.isdir(name)
    try:
        compile_script(python_abspath(name) if plain_file else resolved.path)
    except SyntaxError as exc:
        return exc
    return None


def report_syntax_error(error: SyntaxError) -> None:
    """Print a SyntaxError exactly as the interpreter prints one it met compiling the main script."""
    _report_user_exception(error)


def _read_source(path: str) -> str:
    """Read Python source honouring its coding cookie, with universal newlines, as `python` does."""
    import tokenize  # here: the launchers make a Target before their child starts (start-up)

    with open(path, "rb") as f:
        raw = f.read()
    encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
    return io.TextIOWrapper(io.BytesIO(raw), encoding).read()


class Outcome(NamedTuple):
    """How the user's code ended, so the caller can finish its own work before exiting the same way."""

    exit_status: int
    system_exit: SystemExit | None = None
    keyboard_interrupt: bool = False

    def finish(self) -> None:
        """Leave the interpreter exactly as `python` would have for this outcome."""
        if self.keyboard_interrupt:
            # CPython exits through SIGINT after an unhandled KeyboardInterrupt, so the shell sees it.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        if self.system_exit is not None:
            raise self.system_exit
        sys.exit(self.exit_status)


def exit_status_of(code: object) -> int:
    """Map a SystemExit code to the process exit status, as CPython's handler does."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF  # the OS keeps the low byte: sys.exit(-1) is status 255
    return 1  # CPython prints the object to stderr and exits 1


class Runner:
    """Set up `__main__` for one target and execute it."""

    def __init__(self, target: Target) -> None:
        self.target = target
        # Found, not hashed: the launcher compared the script's sha256 already (and hashlib costs start-up).
        self.path = locate(target)

    @property
    def code_filename(self) -> str | None:
        """Return the filename the script's code is compiled under (its frames' co_filename); None for -m."""
        if self.target.is_module:
            return None
        if os.path.isdir(self.target.name):
            return self.path
        return python_abspath(self.target.name)

    def _main_module(self) -> tuple[types.ModuleType, types.CodeType]:
        """Build the fresh `__main__` module and the code to run in it."""
        main = types.ModuleType("__main__")
        main.__builtins__ = sys.modules["builtins"]  # type: ignore[attr-defined]
        main.__annotations__ = {}  # the interpreter's own __main__ starts with an empty one
        path = self.path
        if self.target.is_module:
            # Mirrors runpy._run_module_as_main + runpy._run_code (CPython 3.10-3.13): runpy finds the
            # spec and code (importing parent packages, as python -m does), we run it in a fresh module.
            import runpy

            try:
                _, spec, code = runpy._get_module_details(self.target.name, ScriptNotFound)  # type: ignore[attr-defined]
            except ScriptNotFound as exc:
                raise ScriptNotFound(str(exc).replace("\n", " ")) from None
            loader = spec.loader
            main.__file__ = spec.origin
            main.__cached__ = spec.cached  # type: ignore[attr-defined]
            main.__loader__ = loader
            main.__package__ = spec.parent
            main.__spec__ = spec
        else:
            # Mirrors pymain_run_file -> _PyRun_SimpleFileObject (CPython 3.11). Python makes the name
            # given on the command line absolute without normalising it (`work/../src/x.py` stays).
            path = self.code_filename or path
            code = compile_script(path)
            main.__file__ = path
            main.__cached__ = None  # type: ignore[attr-defined]
            main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
            main.__package__ = None
            main.__spec__ = None
        return main, code

    def _prepare_path(self) -> None:
        """Set sys.path[0] as python does, before a -m module is looked up through it."""
        if self.target.is_module:
            path0 = os.getcwd()
        elif os.path.isdir(self.target.name):
            path0 = os.path.abspath(self.target.name)
        else:
            path0 = os.path.dirname(os.path.realpath(self.target.name))
        # Under -P / PYTHONSAFEPATH python prepends nothing; the child was started the same way.
        if not sys.flags.safe_path:
            sys.path[0] = path0

    def _prepare_sys(self, main: types.ModuleType) -> None:
        """Set sys.argv and sys.modules['__main__'] as python sets them."""
        if self.target.is_module:
            sys.argv = [self.path, *self.target.args]
        else:
            sys.argv = [self.target.name, *self.target.args]
        sys.modules["__main__"] = main
        # multiprocessing's spawn start method reads __main__.__file__/__spec__ to re-import the script
        # as __mp_main__ in each child; a fresh module with python's attributes gives it exactly that.

    def run(self, on_exception: Callable[[BaseException], None] | None = None) -> Outcome:
        """Execute the target; return how it ended instead of exiting."""
        self._prepare_path()
        try:
            main, code = self._main_module()
        except SyntaxError as exc:
            # The script's own error, reported as python reports it: no detrun frames, status 1.
            if on_exception is not None:
                on_exception(exc)
            _report_user_exception(exc)
            return Outcome(1)
        self._prepare_sys(main)
        try:
            exec(code, main.__dict__)
        except SystemExit as exc:
            return Outcome(exit_status_of(exc.code), system_exit=exc)
        except BaseException as exc:  # noqa: BLE001 - the user's exception, reported as python would
            if on_exception is not None:
                on_exception(exc)
            _report_user_exception(exc)
            return Outcome(1 if not isinstance(exc, KeyboardInterrupt) else 130,
                           keyboard_interrupt=isinstance(exc, KeyboardInterrupt))
        return Outcome(0)


class CommandRunner:
    """Run a command (a launcher such as torchrun, a shell script) as a child process and wait for it."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.command = command
        self.env = env  # this process's environment plus detrun's bootstrap (detrun.bootstrap.hide)

    def run(self) -> Outcome:
        """Run the command to its end; return its exit status as a shell sees it (128+N for a signal)."""
        import subprocess

        try:
            process = subprocess.Popen(self.command, env=self.env)
        except OSError as exc:
            raise ScriptNotFound(f"cannot run {self.command[0]}: {exc.strerror or exc}") from None

        def forward(signum: int, _frame: object) -> None:
            process.send_signal(signum)  # the launcher stops its ranks in its own way

        previous = signal.signal(signal.SIGTERM, forward)
        try:
            while True:
                try:
                    status = process.wait()
                    break
                except KeyboardInterrupt:
                    continue  # Ctrl-C reached the whole process group: the command ends on its own
        finally:
            signal.signal(signal.SIGTERM, previous)
        return Outcome(128 - status if status < 0 else status)


def _strip_own_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """Drop the leading traceback entries that belong to detrun, so the user sees only their code."""
    own_dir = os.path.dirname(os.path.abspath(__file__))
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(own_dir + os.sep):
        tb = tb.tb_next
    return tb


def _report_user_exception(exc: BaseException) -> None:
    """Show an uncaught exception through sys.excepthook, the way the interpreter does."""
    tb = _strip_own_frames(exc.__traceback__)
    exc.__traceback__ = tb
    try:
        sys.excepthook(type(exc), exc, tb)
    except BaseException:  # noqa: BLE001 - mirrors CPython's "Error in sys.excepthook"
        sys.stderr.write("Error in sys.excepthook:\n")
        sys.__excepthook__(*sys.exc_info())
        sys.stderr.write("\nOriginal exception was:\n")
        sys.__excepthook__(type(exc), exc, tb)


__all__ = ["Target", "ResolvedTarget", "Runner", "CommandRunner", "Outcome", "resolve", "locate", "exit_status_of", "DetrunError",
           "python_abspath", "syntax_error_of", "report_syntax_error"]
