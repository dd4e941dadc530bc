"""Digests of tensors: the wrapping sum of their bytes read as words, the same value on CPU and GPU.

A tensor's digest is the sum of its bytes read as 64-bit words (32-, 16- or 8-bit words when its
size is not a multiple of 8), mod 2**64: exact integer arithmetic, so any single changed bit
changes it, and a vectorised pass over memory without copies on CPU (crc32 costs 6x more).
Shared by the per-step digests and the final-state digest.
"""
from __future__ import annotations

import struct
import zlib
from typing import Any

MASK64 = (1 << 64) - 1


def word_width(nbytes: int) -> int:
    """Return the widest word (8, 4, 2 or 1 bytes) that tiles a tensor's bytes."""
    return next(width for width in (8, 4, 2, 1) if nbytes % width == 0)


def local_shard(tensor: Any) -> Any:
    """Return a sharded tensor's local part (an FSDP2/tensor-parallel DTensor); any other tensor unchanged.

    Each rank digests what it holds: a DTensor has no bytes of its own (`.numpy()` refuses it), and
    its full value would need a collective inside a hook.
    """
    if type(tensor).__name__ == "DTensor" and hasattr(tensor, "to_local"):
        return tensor.to_local()
    return tensor


def word_view(torch: Any, param: Any) -> Any:
    """Return a numpy view of a contiguous CPU tensor's bytes as unsigned words, or None."""
    param = local_shard(param)
    if not param.is_contiguous():
        return None
    flat = param.detach().reshape(-1)
    width = word_width(flat.numel() * flat.element_size())
    words = flat.view(torch.uint8).numpy()
    return words.view({8: "<u8", 4: "<u4", 2: "<u2", 1: "u1"}[width])


def device_word_sum(torch: Any, param: Any) -> Any:
    """Return a device tensor's wrapping word sum as int64, as one reduction (same value as on CPU)."""
    flat = local_shard(param).detach().contiguous().reshape(-1)
    width = word_width(flat.numel() * flat.element_size())
    words = flat.view(torch.uint8).view({8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[width])
    if width < 8:
        # Signed narrow words would sign-extend; mask back to their unsigned value before summing.
        return (words.to(torch.int64) & ((1 << (8 * width)) - 1)).sum(dtype=torch.int64)
    return words.sum(dtype=torch.int64)


def tensor_word_sum(torch: Any, tensor: Any) -> int:
    """Return any dense tensor's wrapping word sum now (it waits for the device)."""
    detached = local_shard(tensor).detach()
    if detached.device.type == "cpu":
        view = word_view(torch, detached)
        if view is None:
            view = word_view(torch, detached.contiguous())
        return int(view.sum(dtype="<u8")) & MASK64
    return int(device_word_sum(torch, detached).item()) & MASK64


def fold(values: list[int]) -> int:
    """Fold 64-bit sums into one 32-bit digest."""
    return zlib.crc32(struct.pack(f"<{len(values)}Q", *(v & MASK64 for v in values)))
