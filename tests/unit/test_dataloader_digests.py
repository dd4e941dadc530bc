"""Batch digests: the one-call path gives the bytes, and so the digest, that every trace has recorded.

Version 2 of dl.batch/dl.fetched digests with XXH3's low 32 bits, version 1 with crc32.
"""
from __future__ import annotations

import zlib
from collections import namedtuple

import numpy as np
import pytest
import torch
import xxhash

from detrun.engine.sources.dataloader import _leaves, batch_digester, batch_digests

# The definitions, by version: of the values' bytes, in C order.
DEFINITIONS = {1: zlib.crc32, 2: lambda data: xxhash.xxh3_64_intdigest(data) & 0xFFFFFFFF}


def _bytes_digest(tensor: torch.Tensor, version: int = 2) -> int:
    data = tensor.detach().resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8).numpy()
    return DEFINITIONS[version](bytes(data))


def _digests(data: object, version: int = 2) -> list[int]:
    return batch_digests(torch, data, batch_digester(version))


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


@pytest.mark.parametrize("version", sorted(DEFINITIONS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_tensor_is_digested_as_its_bytes_whatever_its_layout_or_dtype(name: str, version: int) -> None:
    tensor = CASES[name]
    assert _digests(tensor, version) == [_bytes_digest(tensor, version)]
    assert _digests((tensor, tensor * 2), version) == [_bytes_digest(tensor, version), _bytes_digest(tensor * 2, version)]


def test_the_two_versions_are_different_functions() -> None:
    tensor = torch.randn(4, 5)
    assert _digests(tensor, 1) != _digests(tensor, 2)
    assert batch_digester(1) is zlib.crc32


def test_every_batch_shape_digests_its_leaves_in_the_order_they_are_named() -> None:
    x, y = torch.randn(4, 3), torch.arange(4)
    Pair = namedtuple("Pair", "inputs targets")
    for batch in ([x, y], (x, y), {"x": x, "y": y}, Pair(x, y), (x, [y, "label"]), (x, np.arange(3))):
        leaves = list(_leaves(batch))
        digests = _digests(batch)
        assert len(digests) == len(leaves)
        assert digests[0] == _bytes_digest(x)
    assert _digests(()) == []
    # Order matters: the same samples in another order are another batch.
    assert _digests(x) != _digests(x.flip(0))
