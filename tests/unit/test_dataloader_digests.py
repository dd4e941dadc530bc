"""Batch digests: the one-call path gives the bytes, and so the crc32, that every trace has recorded."""
from __future__ import annotations

import zlib
from collections import namedtuple

import numpy as np
import pytest
import torch

from detrun.engine.sources.dataloader import _leaves, batch_digests


def _bytes_crc(tensor: torch.Tensor) -> int:
    """The definition: crc32 of the values' bytes, in C order."""
    return zlib.crc32(tensor.detach().resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8).numpy())


CASES = {
    "float32": torch.randn(4, 5),
    "transposed": torch.randn(4, 5).t(),
    "strided slice": torch.randn(10)[::2],
    "offset slice": torch.randn(10)[2:7],
    "expanded": torch.randn(2, 3).expand(4, 2, 3),
    "requires grad": torch.randn(3, requires_grad=True),
    "scalar": torch.tensor(3.0),
    "empty": torch.empty(0, 3),
    "int64": torch.randint(0, 9, (7,)),
    "bool": torch.tensor([True, False, True]),
    "bfloat16": torch.randn(3, dtype=torch.bfloat16),
    "float16": torch.randn(3, dtype=torch.float16),
    "complex": torch.randn(3, dtype=torch.complex64),
    "conjugated view": torch.randn(3, dtype=torch.complex64).conj(),
    "parameter": torch.nn.Parameter(torch.randn(2)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_tensor_is_digested_as_its_bytes_whatever_its_layout_or_dtype(name: str) -> None:
    tensor = CASES[name]
    assert batch_digests(torch, tensor) == [_bytes_crc(tensor)]
    assert batch_digests(torch, (tensor, tensor * 2)) == [_bytes_crc(tensor), _bytes_crc(tensor * 2)]


def test_every_batch_shape_digests_its_leaves_in_the_order_they_are_named() -> None:
    x, y = torch.randn(4, 3), torch.arange(4)
    Pair = namedtuple("Pair", "inputs targets")
    for batch in ([x, y], (x, y), {"x": x, "y": y}, Pair(x, y), (x, [y, "label"]), (x, np.arange(3))):
        leaves = list(_leaves(batch))
        digests = batch_digests(torch, batch)
        assert len(digests) == len(leaves)
        assert digests[0] == _bytes_crc(x)
    assert batch_digests(torch, ()) == []
    # Order matters: the same samples in another order are another batch.
    assert batch_digests(torch, x) != batch_digests(torch, x.flip(0))
