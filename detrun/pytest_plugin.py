"""pytest plugin: the `detrun_check` fixture fails a test whose training does not replay bit for bit.

    def test_training_replays(detrun_check):
        detrun_check(train, epochs=1)       # train(epochs=1) recorded, then replayed, in this process

The fixture calls the function twice in the test's process, first recording, then replaying (see
`detrun.api` for what an in-process run covers), and fails the test with the verdict's reason unless
the replay is REPRODUCED; it returns the ReplayResult. The trace goes to the test's `tmp_path`, or
to `--detrun-traces DIR` (kept there, one per test, for `detrun show`).

Registered through the `pytest11` entry point `detrun`, or by hand with `-p detrun.pytest_plugin`.
Importing this module imports nothing of detrun's and no framework: collection stays cheap.
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Callable

import pytest

if TYPE_CHECKING:
    from detrun.api import ReplayResult


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the plugin's options."""
    group = parser.getgroup("detrun", "detrun record/replay checks")
    group.addoption("--detrun-traces", metavar="DIR", default=None,
                    help="keep the traces the detrun_check fixture writes in DIR (one per test) instead of tmp_path")


def pytest_configure(config: pytest.Config) -> None:
    """Declare the plugin's marker."""
    config.addinivalue_line("markers", "detrun_policy(name): the determinism policy detrun_check records with "
                                       "(strict, the default, or off)")


@pytest.fixture
def detrun_check(request: pytest.FixtureRequest, tmp_path: Any) -> Callable[..., ReplayResult]:
    """Return check(fn, *args, **kwargs): record fn(*args, **kwargs), replay it, fail unless REPRODUCED."""
    kept = request.config.getoption("--detrun-traces")
    marker = request.node.get_closest_marker("detrun_policy")
    policy = str(marker.args[0]) if marker is not None and marker.args else "strict"
    calls = 0

    def check(fn: Callable[..., object], /, *args: Any, **kwargs: Any) -> ReplayResult:
        nonlocal calls
        from detrun.api import check_call

        calls += 1
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name) + (f"-{calls}" if calls > 1 else "")
        if kept:
            os.makedirs(kept, exist_ok=True)
            trace = os.path.join(kept, f"{name}.zst")
        else:
            trace = os.path.join(str(tmp_path), f"detrun-{name}.zst")
        result = check_call(fn, args, kwargs, trace=trace, policy=policy)
        if not result.reproduced:
            lines = [f"detrun: {result.line}", f"trace: {trace}"]
            lines += [f"  also differs at {d}" if d.startswith("step ") else f"  also differs: {d}"
                      for d in result.divergences[1:4]]
            lines += [f"  possible cause: {c}" for c in result.causes[:3]]
            pytest.fail("\n".join(lines), pytrace=False)
        return result

    return check
