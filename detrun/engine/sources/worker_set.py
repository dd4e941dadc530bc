"""The sources a DataLoader worker process records on its own (its RNGs, entropy and listings).

Kept apart from `all_sources()` so that the DataLoader source, which starts worker sessions, does
not import the package that imports it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from detrun.engine.sources import Source


def worker_sources() -> list[Source]:
    """Return the sources a DataLoader worker process records on its own."""
    from detrun.engine.sources import listing_order, numpy_random, os_entropy, python_random, torch_random

    return [
        os_entropy.EntropySource(),
        python_random.PyRandomSource(),
        numpy_random.NumpySource(),
        torch_random.TorchSource(),
        listing_order.FsOrderSource(),
    ]
