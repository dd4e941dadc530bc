"""Deterministic reflection / replication pad backward: per-axis slice additions in a fixed order.

torch's CUDA kernels (aten/src/ATen/native/cuda/ReflectionPad.cu, ReplicationPadding.cu) add every
output gradient into its source cell with atomicAdd, so mirrored and edge cells, which receive several
gradients, are summed in a varying order. Here each axis is folded back by three slice additions:
the centre, then the left border, then the right border.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from detrun.patches._common import compute_dtype, with_out
from detrun.patches._core import Kernel, Patch


def _fold_axis(grad: torch.Tensor, dim: int, in_size: int, left: int, right: int, reflect: bool) -> torch.Tensor:
    """Fold the padded axis ``dim`` of ``grad`` back to ``in_size`` cells, adding border gradients to their sources."""
    out_size = grad.shape[dim]
    shape = list(grad.shape)
    shape[dim] = in_size
    folded = torch.zeros(shape, dtype=grad.dtype, device=grad.device)
    # Output cell j reads input cell p = j - left when 0 <= p < in_size (negative pads crop).
    first, last = max(left, 0), min(left + in_size, out_size)
    if last > first:
        folded.narrow(dim, first - left, last - first).add_(grad.narrow(dim, first, last - first))
    if left > 0:
        count = min(left, out_size)
        border = grad.narrow(dim, 0, count)
        if reflect:
            # Cells j = 0 .. count-1 mirror onto left - j: a reversed block ending at index left.
            folded.narrow(dim, left - count + 1, count).add_(border.flip(dim))
        else:
            folded.narrow(dim, 0, 1).add_(border.sum(dim, keepdim=True))
    start = max(left + in_size, 0)
    if right > 0 and out_size > start:
        count = out_size - start
        border = grad.narrow(dim, start, count)
        if reflect:
            # Cell p = in_size + k mirrors onto in_size - 2 - k.
            top = 2 * (in_size - 1) - (start - left)
            folded.narrow(dim, top - count + 1, count).add_(border.flip(dim))
        else:
            folded.narrow(dim, in_size - 1, 1).add_(border.sum(dim, keepdim=True))
    return folded


def _pad_backward(grad_output: torch.Tensor, self: torch.Tensor, padding: Sequence[int], reflect: bool) -> torch.Tensor:
    """Return grad_input of reflection (``reflect``) or replication padding."""
    grad = grad_output.to(compute_dtype(grad_output.dtype))
    # padding lists (left, right) pairs from the last axis backwards, as F.pad does.
    for pair in range(len(padding) // 2):
        dim = grad.dim() - 1 - pair
        grad = _fold_axis(grad, dim, self.shape[dim], int(padding[2 * pair]), int(padding[2 * pair + 1]), reflect)
    return grad.to(grad_output.dtype)


def reflection_pad_backward(grad_output: torch.Tensor, self: torch.Tensor, padding: Sequence[int]) -> torch.Tensor:
    """Return grad_input of reflection_pad{1,2,3}d."""
    return _pad_backward(grad_output, self, padding, reflect=True)


def replication_pad_backward(grad_output: torch.Tensor, self: torch.Tensor, padding: Sequence[int]) -> torch.Tensor:
    """Return grad_input of replication_pad{1,2,3}d."""
    return _pad_backward(grad_output, self, padding, reflect=False)


def _patch(kind: str, fn: Callable[..., torch.Tensor], source: str) -> Patch:
    """Build the patch for ``kind``_pad{1,2,3}d_backward and their .grad_input overloads."""
    kernels = []
    for spatial in (1, 2, 3):
        op = f"{kind}_pad{spatial}d_backward"
        args = f"Tensor grad_output, Tensor self, SymInt[{2 * spatial}] padding"
        kernels.append(Kernel(op, f"aten::{op}({args}) -> Tensor", fn))
        kernels.append(
            Kernel(f"{op}.grad_input", f"aten::{op}.grad_input({args}, *, Tensor(a!) grad_input) -> Tensor(a!)", with_out(fn))
        )
    return Patch(
        name=f"{kind}_pad_backward",
        kernels=tuple(kernels),
        impl=fn,
        upstream=source,
        min_torch=(2, 1),
        related_ops=tuple(f"aten::{kind}_pad{spatial}d" for spatial in (1, 2, 3)),
        summary="per-axis fold: centre slice, then mirrored/edge border slices, added in a fixed order",
    )


PATCHES: tuple[Patch, ...] = (
    # Mirrors aten/src/ATen/native/cuda/ReflectionPad.cu: reflection_pad{1,2,3}d_backward_out_cuda
    # (native_functions.yaml: reflection_pad{1,2,3}d_backward.grad_input, dispatch CUDA).
    _patch("reflection", reflection_pad_backward, "aten/src/ATen/native/cuda/ReflectionPad.cu: reflection_pad*d_backward_out_cuda"),
    # Mirrors aten/src/ATen/native/cuda/ReplicationPadding.cu: replication_pad{1,2,3}d_backward_out_cuda.
    _patch(
        "replication",
        replication_pad_backward,
        "aten/src/ATen/native/cuda/ReplicationPadding.cu: replication_pad*d_backward_out_cuda",
    ),
)
