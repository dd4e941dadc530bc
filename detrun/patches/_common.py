"""Deterministic building blocks shared by the op families: dense axis matrices and sort-based scatter sums."""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import torch

# Products of the small dense matrices below stay cheap (memory-bound) while the pooled side is at most
# this many elements; past it, one GEMM per axis does far less arithmetic than one Kronecker GEMM.
KRONECKER_MAX_OUTER = 64
KRONECKER_MAX_ELEMENTS = 1 << 22


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype to accumulate in: float32 for half types (as torch's acc_type does), else ``dtype``."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def matrix_cache(builder: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Memoise a builder of small constant matrices keyed by plain arguments, dtype and device."""
    return functools.lru_cache(maxsize=512)(builder)


def apply_axis_matrices(
    x: torch.Tensor, matrices: Sequence[torch.Tensor], channels_last: bool = False
) -> torch.Tensor:
    """Map the trailing spatial axes of ``x`` with one matrix each: ``out = M_d @ x`` along each axis.

    ``matrices[i]`` has shape (new_len, old_len) and applies to spatial axis i of the last
    ``len(matrices)`` axes. The result is a plain sum of products computed by GEMMs, which are
    deterministic, and it is the shape of ``x`` with those axes resized.
    """
    spatial = len(matrices)
    lead = x.shape[:-spatial]
    old = [m.shape[1] for m in matrices]
    new = [m.shape[0] for m in matrices]
    if math.prod(old) <= KRONECKER_MAX_OUTER and math.prod(old) * math.prod(new) <= KRONECKER_MAX_ELEMENTS:
        # Small pooled side (adaptive pools to 1x1, 7x7, ...): one GEMM against the Kronecker product.
        kron = matrices[0]
        for m in matrices[1:]:
            # Outer product by broadcasting: torch.kron mis-handles some size-1 operands.
            kron = (kron[:, None, :, None] * m[None, :, None, :]).reshape(kron.shape[0] * m.shape[0], -1)
        if channels_last and x.dim() == spatial + 2:
            # (N, spatial..., C) rows: the GEMM writes a channels-last result directly, without a copy.
            rows = x.movedim(1, -1).reshape(x.shape[0], math.prod(old), x.shape[1])
            out = torch.matmul(kron, rows)
            return out.view(x.shape[0], *new, x.shape[1]).movedim(-1, 1)
        out = x.reshape(-1, math.prod(old)) @ kron.t()
        return out.view(*lead, *new)
    out = x.contiguous()
    # One GEMM per axis on a contiguous (lead, L, rest) view: the last axis is a right-multiplication,
    # the others a broadcast left-multiplication (strided-batched GEMM), so no transposing copies are made.
    for axis in reversed(range(spatial)):
        dim = out.dim() - spatial + axis
        lead_size = math.prod(out.shape[:dim])
        rest_size = math.prod(out.shape[dim + 1 :])
        matrix = matrices[axis]
        if rest_size == 1:
            mapped = out.reshape(lead_size, out.shape[dim]) @ matrix.t()
        else:
            mapped = torch.matmul(matrix, out.reshape(lead_size, out.shape[dim], rest_size))
        out = mapped.view(*out.shape[:dim], matrix.shape[0], *out.shape[dim + 1 :])
    if channels_last and out.dim() == 4:
        return out.contiguous(memory_format=torch.channels_last)
    return out


def deterministic_scatter_sum(
    size: int, index: torch.Tensor, values: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Return ``out[size]`` with ``out[index[i]] += values[i]``, summed in a fixed order.

    ``index_put_(accumulate=True)`` sorts the indices (stable radix sort on CUDA) and reduces each run
    of equal indices sequentially in acc_type; it gave one bitwise result in both modes on the H100
    (DESIGN.md), unlike ``index_add_`` / ``scatter_add_``, which use atomics in default mode.
    """
    out = torch.zeros(size, dtype=dtype or values.dtype, device=values.device)
    if index.numel() == 0:
        return out
    return out.index_put_((index.reshape(-1),), values.reshape(-1).to(out.dtype), accumulate=True)


def scatter_sum_into_planes(
    grad_output: torch.Tensor, indices: torch.Tensor, input_shape: Sequence[int], spatial: int
) -> torch.Tensor:
    """Return the max-pool style backward: per plane, ``grad_input[plane, indices] += grad_output``.

    ``indices`` hold flat offsets into each input plane (the last ``spatial`` axes), as torch's
    max/adaptive-max/fractional-max pools return them.
    """
    plane = math.prod(input_shape[-spatial:])
    planes = math.prod(input_shape[:-spatial])
    per_plane_out = indices.numel() // max(planes, 1)
    offsets = torch.arange(planes, device=indices.device, dtype=torch.int64).repeat_interleave(per_plane_out)
    flat_index = indices.reshape(-1).to(torch.int64) + offsets * plane
    acc = compute_dtype(grad_output.dtype)
    grad = deterministic_scatter_sum(planes * plane, flat_index, grad_output.reshape(-1), dtype=acc)
    return grad.view(*input_shape).to(grad_output.dtype)


def with_out(fn: Callable[..., Any], n_out: int = 1) -> Callable[..., Any]:
    """Turn a functional kernel into its ``.out`` overload: compute, then resize and copy into the out tensors."""

    def out_kernel(*args: Any, **kwargs: Any) -> Any:
        outs = [kwargs.pop(name) for name in list(kwargs) if name in OUT_ARG_NAMES]
        result = fn(*args, **kwargs)
        results = result if isinstance(result, tuple) else (result,)
        for target, value in zip(outs, results):
            target.resize_(value.shape).copy_(value)
        return tuple(outs) if n_out > 1 else outs[0]

    out_kernel.__name__ = f"{fn.__name__}_out"
    return out_kernel


OUT_ARG_NAMES = ("out", "grad_input", "output", "total_weight", "out0", "out1", "values", "indices")
