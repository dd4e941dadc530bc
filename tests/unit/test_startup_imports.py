"""Start-up's import diet: what `detrun record` / `replay` load before the script runs (issue 15: under 0.1 s).

Each probe is a fresh interpreter that imports what one side imports before the user's first line
and lists the named modules it was not supposed to load; they are loaded at their point of use.
"""
from __future__ import annotations

import subprocess
import sys


def _loaded(setup: str, names: tuple[str, ...]) -> list[str]:
    """Run `setup` in a fresh interpreter; return which of `names` it left in sys.modules."""
    probe = f"import sys\n{setup}\nprint([m for m in {names!r} if m in sys.modules])"
    return eval(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)


def test_the_child_sets_up_without_the_launcher_or_the_helpers_of_later_work() -> None:
    # What detrun._child imports and builds before runner.run(): the session, every source, the writer.
    # main() without a config reads the config's name and refuses: it imports what that takes.
    setup = ("import detrun._child\ntry:\n    detrun._child.main()\nexcept SystemExit:\n    pass\n"
             "from detrun.engine.session import Session\n"
             "from detrun.engine.sources import all_sources\nall_sources()\n"
             "from detrun.runner import Runner, Target\nfrom detrun.trace import TraceWriter, read_trace\n"
             "Runner(Target(detrun._child.__file__, (), False))")
    assert _loaded(setup, (
        "detrun.child_process", "detrun.launch", "ctypes",  # the launcher's side
        "hashlib", "difflib", "subprocess", "secrets",  # hashing, diffs, git: at their point of use
        "detrun.engine.checkpoint_digest", "zipfile",  # the first written file's digest
        "importlib.abc", "importlib.resources",  # the import watcher is a finder by its find_spec alone
        "dataclasses", "inspect",  # ~8 ms: the verdict's, the roles' and the codecs' records are NamedTuples
        "detrun.env.diff",  # a replay's torch facts compared
        "click", "torch", "numpy",
    )) == []


def test_record_starts_its_child_without_click_the_trace_reader_or_the_replay_side() -> None:
    # The console script's path for a plain line: cli.main -> cli.direct -> launch (cli/direct.py).
    setup = ("from detrun.cli import main\nfrom detrun.cli.direct import parse_direct\n"
             "assert parse_direct(['record', '-q', '-o', 't.zst', __import__('detrun').__file__]) is not None\n"
             "import detrun.launch\nfrom detrun.runner import Target, resolve\n"
             "from detrun.env.fingerprint import fingerprint\n"
             "resolve(Target(__import__('detrun').__file__))\nfingerprint()")  # what record() does before the child
    assert _loaded(setup, (
        "click", "detrun.cli.click_group", "detrun.cli.common", "detrun.cli.record_cmd",  # the click commands
        "detrun.trace", "detrun.trace.reader", "detrun.trace.salvage", "zstandard", "msgpack",  # replay, salvage
        "dataclasses", "inspect",  # ~7 ms: runner's and option_placement's records are NamedTuples
        "hashlib", "_hashlib",  # OpenSSL: the script's sha256 comes from small_sha256
        "detrun.env.diff", "secrets", "difflib", "datetime",  # datetime: msgpack's, in a replay only
        "detrun.engine.session", "torch", "numpy",
    )) == []


def test_record_spawns_its_child_before_loading_what_checks_the_script() -> None:
    # launch.record starts the child with only launch's own imports loaded; resolve, the syntax check,
    # the fingerprint and the session config are computed while the child's interpreter starts.
    setup = ("from detrun.cli import main\nfrom detrun.cli.direct import parse_direct\n"
             "assert parse_direct(['record', '-q', '-o', 't.zst', __import__('detrun').__file__]) is not None\n"
             "from detrun.cli.direct import launcher_command, make_target\n"
             "assert launcher_command(__import__('detrun').__file__, (), False) is None\n"
             "make_target(__import__('detrun').__file__, (), False)\n"
             "import detrun.launch")
    assert _loaded(setup, (
        "subprocess", "ctypes",  # the child is started with os.posix_spawn and watches a pipe
        # The scratch directory is made with os.mkdir and removed without shutil; a script's name is
        # looked up on PATH (shutil.which) only when it is not a .py file.
        "tempfile", "shutil", "random",
        "threading", "selectors", "detrun.progress_line",  # the progress relay: only for a terminal
        # The Target is made before (cli/direct.py); reading the script (tokenize) and running a
        # module (runpy) come after.
        "tokenize", "runpy", "detrun.replay_inputs", "detrun.env.fingerprint", "platform",
    )) == []


def test_replay_reads_the_header_and_starts_its_child_without_dataclasses(tmp_path: object) -> None:
    # read_header validates the header against trace.registry (EventKind is a NamedTuple); the
    # environment's comparison (env.diff) runs while the child starts. The trace package's writer
    # copies a file with shutil only where it cannot link one.
    setup = ("import os\nfrom detrun.cli import main\nimport detrun.launch\n"
             "from detrun.replay_inputs import validated_hashseed, validated_thread_env\n"
             "from detrun.trace import TraceWriter, read_header\n"
             f"path = os.path.join({str(tmp_path)!r}, 't.zst')\n"
             "TraceWriter(path, {'detrun_version': '0', 'created': 'now', 'env': {}, 'cwd': '/', 'settings': {}})"
             ".close()\n"
             "read_header(path)")
    assert _loaded(setup, ("dataclasses", "inspect", "click", "hashlib", "detrun.env.diff",
                           "shutil", "tokenize", "runpy")) == []


def test_the_replays_environment_comparison_loads_no_dataclasses() -> None:
    # It runs in the launcher while the child starts: on a 2-core machine its imports take CPU from
    # the child's start-up (dataclasses and inspect: ~8 ms).
    setup = ("from detrun.env import diff\n"
             "found = diff.classify([('env.OMP_NUM_THREADS', '1', '2'), ('cuda.cudnn', 1, 2)])\n"
             "assert diff.report_lines(found) and diff.causes(found)")
    assert _loaded(setup, ("dataclasses", "inspect")) == []
