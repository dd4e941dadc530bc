"""A JIT compiler's own work (cache listings, helper modules, temp-name generators) is recognised by its frames."""
from __future__ import annotations

import os
import sys
import types

import pytest

from detrun.engine.compiler_frames import called_by_compiler, inside_compiler


def _function_in(filename: str, body: str) -> types.FunctionType:
    """Return `probe()` compiled as if it lived in `filename`."""
    namespace: dict[str, object] = {"inside_compiler": inside_compiler, "called_by_compiler": called_by_compiler}
    exec(compile(f"def probe(inner):\n    return {body}\n", filename, "exec"), namespace)
    return namespace["probe"]  # type: ignore[return-value]


TORCH = os.path.join(os.sep, "venv", "site-packages", "torch")
INDUCTOR = os.path.join(TORCH, "_inductor", "codecache.py")
FX = os.path.join(TORCH, "fx", "_symbolic_trace.py")
WRAPPER = os.path.join(TORCH, "_dynamo", "eval_frame.py")  # torch._disable_dynamo runs user code here


@pytest.fixture
def compiler_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_torch = types.ModuleType("torch")
    fake_torch.__file__ = os.path.join(TORCH, "__init__.py")
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setitem(sys.modules, "torch._dynamo", types.ModuleType("torch._dynamo"))


def test_a_call_from_inductor_is_the_compiler_s(compiler_loaded: None) -> None:
    probe = _function_in(INDUCTOR, "inner()")
    assert probe(lambda: inside_compiler(skip=1)) is True
    assert probe(lambda: called_by_compiler(skip=1)) is True


def test_torch_fx_and_the_user_are_not_the_compiler(compiler_loaded: None) -> None:
    # symbolic_trace builds a GraphModule that users train: it must stay watched.
    probe = _function_in(FX, "inner()")
    assert probe(lambda: inside_compiler(skip=1)) is False
    assert inside_compiler() is False
    assert called_by_compiler() is False


def test_a_users_folder_named_like_a_compiler_and_dynamo_s_wrappers_are_not_the_compiler(
        compiler_loaded: None) -> None:
    user = _function_in(os.path.join(os.sep, "home", "me", "triton", "torch", "_inductor", "train.py"), "inner()")
    assert user(lambda: inside_compiler(skip=1)) is False
    assert user(lambda: called_by_compiler(skip=1)) is False
    wrapper = _function_in(WRAPPER, "inner()")  # e.g. torch.utils.checkpoint(fn) building a module
    assert wrapper(lambda: inside_compiler(skip=1)) is False


def test_only_the_nearest_caller_counts_for_called_by_compiler(compiler_loaded: None) -> None:
    # inductor -> user callback -> listing: the user's listing, although the compiler is further up.
    outer = _function_in(INDUCTOR, "inner()")
    user = _function_in("/home/me/train.py", "inner()")
    assert outer(lambda: user(lambda: called_by_compiler(skip=1))) is False
    assert outer(lambda: user(lambda: inside_compiler(skip=1))) is True


def test_without_a_compiler_imported_nothing_is_the_compiler_s(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch._dynamo", raising=False)
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    probe = _function_in(INDUCTOR, "inner()")
    assert probe(lambda: inside_compiler(skip=1)) is False
