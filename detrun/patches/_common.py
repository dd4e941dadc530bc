"""Deterministic building blocks shared by the op families: dense axis matrices and sort-based scatter sums."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

# Products of the small dense matrices below stay cheap (memory-bound) while the pooled side is at most
# this many elements; past it, one GEMM per axis does far less arithmetic than one Kronecker GEMM.
KRONECKER_MAX_OUTER = 64
KRONECKER_MAX_ELEMENTS = 1 << 22
# A GEMM along an axis costs 2 * old_len flops per output element; a banded gather costs about
# 3 * K memory accesses. On an H100 (fp32 CUDA cores vs HBM) they break even near old_len ~ 100 K.
GATHER_WHEN_OLD_LEN_OVER_K = 64


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype to accumulate in: float32 for half types (as torch's acc_type does), else ``dtype``."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def matrix_cache(builder: Callable[..., Any]) -> Callable[..., Any]:
    """Memoise a builder of small constant matrices keyed by plain arguments, dtype and device."""
    return functools.lru_cache(maxsize=512)(builder)


@dataclass(frozen=True)
class AxisMap:
    """A linear map along one axis: ``out[i] = sum_j dense[i, j] * x[j]``, plus its banded gather form."""

    dense: torch.Tensor  # (new_len, old_len)
    columns: torch.Tensor  # (new_len, K) source positions of the nonzeros, padded with 0
    weights: torch.Tensor  # (new_len, K) their weights, padded with 0

    @property
    def band(self) -> int:
        """Return K, the most nonzeros in one row."""
        return self.columns.shape[1]


def axis_map(dense: torch.Tensor) -> AxisMap:
    """Return ``dense`` with its banded form (nonzero columns per row, in increasing order)."""
    dense = dense.contiguous()
    nonzero = dense != 0
    band = max(int(nonzero.sum(dim=1).max()) if dense.numel() else 0, 1)  # one host sync; callers cache the map
    # A stable sort of "is zero" puts each row's nonzero columns first, in column order.
    order = torch.sort((~nonzero).to(torch.uint8), dim=1, stable=True).indices[:, :band]
    weights = dense.gather(1, order)
    columns = torch.where(weights != 0, order, torch.zeros_like(order))
    return AxisMap(dense, columns.contiguous(), weights.contiguous())


def apply_axis_maps(x: torch.Tensor, maps: Sequence[AxisMap], channels_last: bool = False) -> torch.Tensor:
    """Map the trailing spatial axes of ``x``, one AxisMap per axis; every step is a GEMM or a fixed-order gather-sum.

    The result is the shape of ``x`` with those axes resized; no atomics are involved, so it is
    bitwise reproducible.
    """
    spatial = len(maps)
    lead = x.shape[:-spatial]
    old = [m.dense.shape[1] for m in maps]
    new = [m.dense.shape[0] for m in maps]
    if math.prod(old) <= KRONECKER_MAX_OUTER and math.prod(old) * math.prod(new) <= KRONECKER_MAX_ELEMENTS:
        # Small pooled side (adaptive pools to 1x1, 7x7, ...): one GEMM against the Kronecker product.
        kron = maps[0].dense
        for m in maps[1:]:
            # Outer product by broadcasting: torch.kron mis-handles some size-1 operands.
            kron = (kron[:, None, :, None] * m.dense[None, :, None, :]).reshape(kron.shape[0] * m.dense.shape[0], -1)
        if channels_last and x.dim() == spatial + 2:
            # (N, spatial..., C) rows: the GEMM writes a channels-last result directly, without a copy.
            rows = x.movedim(1, -1).reshape(x.shape[0], math.prod(old), x.shape[1])
            out = torch.matmul(kron, rows)
            return out.view(x.shape[0], *new, x.shape[1]).movedim(-1, 1)
        out = x.reshape(-1, math.prod(old)) @ kron.t()
        return out.view(*lead, *new)
    out = x.contiguous()
    # One step per axis on a contiguous (lead, L, rest) view, last axis first.
    for axis in reversed(range(spatial)):
        dim = out.dim() - spatial + axis
        out = _apply_one_axis(out, dim, maps[axis])
    if channels_last and out.dim() == 4:
        return out.contiguous(memory_format=torch.channels_last)
    return out


def _apply_one_axis(x: torch.Tensor, dim: int, mapping: AxisMap) -> torch.Tensor:
    """Apply ``mapping`` along ``dim`` of the contiguous ``x`` by a gather-sum (banded) or a GEMM (dense)."""
    lead_size = math.prod(x.shape[:dim])
    old_len = x.shape[dim]
    rest_size = math.prod(x.shape[dim + 1 :])
    new_len = mapping.dense.shape[0]
    view = x.reshape(lead_size, old_len, rest_size)
    if old_len > GATHER_WHEN_OLD_LEN_OVER_K * mapping.band:
        # Banded: gather the K sources of every output position, weight them, sum over K in a fixed order.
        picked = view.index_select(1, mapping.columns.reshape(-1)).view(lead_size, new_len, mapping.band, rest_size)
        mapped = (picked * mapping.weights[None, :, :, None]).sum(dim=2)
    elif rest_size == 1:
        mapped = view.view(lead_size, old_len) @ mapping.dense.t()
    else:
        # Left-multiplication broadcast over the batch: a strided-batched GEMM, no transposing copy.
        mapped = torch.matmul(mapping.dense, view)
    return mapped.view(*x.shape[:dim], new_len, *x.shape[dim + 1 :])


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
    per_plane_out = max(indices.numel() // max(planes, 1), 1)
    # Plane number of every grad_output element (arange // size: no host sync, unlike repeat_interleave).
    plane_of = torch.arange(indices.numel(), device=indices.device, dtype=torch.int64) // per_plane_out
    flat_index = indices.reshape(-1).to(torch.int64) + plane_of * plane
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
