"""The policy's uninitialised-memory watch: a library's calls leave the fill off, the program's first turns it on, once."""
from __future__ import annotations

import sysconfig
from collections.abc import Callable, Iterator

import pytest
import torch

from detrun.engine.sources.determinism_policy import PolicySource


class _Failures:
    """The one thing the watch asks of a session: where to report its own failures."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def hook_failed(self, what: str, exc: BaseException) -> None:
        self.failures.append(f"{what}: {exc!r}")


def _library_function() -> Callable[[], torch.Tensor]:
    """Return a function that calls torch.empty from a file in the standard library's directory."""
    namespace: dict[str, object] = {"torch": torch}
    source = "def rebuild():\n    return torch.empty(4)\n"
    exec(compile(source, f"{sysconfig.get_paths()['stdlib']}/detrun_test_library.py", "exec"), namespace)
    return namespace["rebuild"]  # type: ignore[return-value]


@pytest.fixture
def watch() -> Iterator[tuple[PolicySource, _Failures]]:
    """Watch torch.empty and friends; put torch's flag and functions back afterwards."""
    fill, original_empty = torch.utils.deterministic.fill_uninitialized_memory, torch.empty
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # the fill acts only under deterministic algorithms
    torch.utils.deterministic.fill_uninitialized_memory = False
    source, session = PolicySource(), _Failures()
    try:
        source._watch_uninitialised_memory(session)  # type: ignore[arg-type]
        yield source, session
    finally:
        source._empty_watch.undo()
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.use_deterministic_algorithms(deterministic)
    assert torch.empty is original_empty


def test_library_calls_leave_the_fill_off_and_the_programs_first_call_turns_it_on(
        watch: tuple[PolicySource, _Failures]) -> None:
    source, session = watch
    rebuild = _library_function()
    for _ in range(3):  # one library caller: judged at its first call, then found among the judged
        rebuild()
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    assert source._empty_watch.active
    buffer = torch.empty(16)  # this test's own line: the program's
    assert torch.utils.deterministic.fill_uninitialized_memory is True
    assert torch.isnan(buffer).all()  # turned on before the call ran
    assert not source._empty_watch.active  # nothing more to watch
    assert session.failures == []


def test_a_wrapper_bound_during_the_watch_changes_nothing_after_it(watch: tuple[PolicySource, _Failures]) -> None:
    source, session = watch
    bound_empty = torch.empty  # the watch's wrapper, as `from torch import empty` would keep it
    source._empty_watch.undo()  # the session ended
    bound_empty(4)
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    assert session.failures == []


def test_an_empty_shape_is_not_judged_and_a_bad_one_is_torchs_error(watch: tuple[PolicySource, _Failures]) -> None:
    source, session = watch
    empty = torch.empty((0,))  # no elements, no memory to read: torch rebuilds received tensors this way
    assert empty.numel() == 0
    assert torch.utils.deterministic.fill_uninitialized_memory is False and source._empty_watch.active
    with pytest.raises(TypeError):
        torch.empty(("four",))  # the program's error, raised as torch raises it
    assert session.failures == []
    assert torch.utils.deterministic.fill_uninitialized_memory is True  # judged: the program's own call
    assert torch.isnan(torch.empty((2,))).all()
