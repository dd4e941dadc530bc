"""The op digest capture's pieces that need no session: which ops it keeps, and the device digests' folding."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from detrun.engine.digests import device_word_sum, tensor_word_sum  # noqa: E402
from detrun.engine.sources.op_digests import OpDigestSource, _describe  # noqa: E402
from detrun.trace.op_codec import fold64  # noqa: E402


def test_views_are_left_out_and_uninitialised_outputs_not_digested() -> None:
    aten = torch.ops.aten
    assert _describe(aten.view.default) is None and _describe(aten.t.default) is None
    assert _describe(aten.add.Tensor) == ("aten::add.Tensor", True)
    assert _describe(aten.add_.Tensor) == ("aten::add_.Tensor", True)  # in place: its output is new data
    assert _describe(aten.empty.memory_format) == ("aten::empty.memory_format", False)


def test_a_device_sum_read_at_the_step_end_folds_to_the_cpu_digest() -> None:
    source = OpDigestSource()
    source._torch = torch
    tensors = [torch.randn(5, 3), torch.arange(7, dtype=torch.int16), torch.tensor(-1.5, dtype=torch.float64)]
    for tensor in tensors:
        now, device = source._digest(tensor)
        assert device == "cpu" and now == tensor_word_sum(torch, tensor)
        # What a CUDA tensor leaves for the step's end: the reduction as an int64 tensor (signed), and 0.
        assert source._resolve([(device_word_sum(torch, tensor), 0)]) == [fold64(now)]
    pair, _ = source._digest((tensors[0], tensors[1]))
    assert pair == (tensor_word_sum(torch, tensors[0]) + tensor_word_sum(torch, tensors[1])) & ((1 << 64) - 1)


def test_one_changed_bit_changes_the_digest() -> None:
    source = OpDigestSource()
    source._torch = torch
    tensor = torch.randn(64)
    before = source._resolve([source._digest(tensor)[0]])
    tensor.view(torch.int32)[17] ^= 1
    assert source._resolve([source._digest(tensor)[0]]) != before


def test_the_first_k_steps_and_every_nth_are_captured_and_explain_takes_1_to_s() -> None:
    source = OpDigestSource()
    source._first, source._every = 2, 5
    assert [step for step in range(1, 16) if source.wanted(step)] == [1, 2, 5, 10, 15]
    source._until = 3  # explain's replays: steps 1..S, whatever the recording sampled
    assert [step for step in range(1, 16) if source.wanted(step)] == [1, 2, 3]
