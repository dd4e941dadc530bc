"""Deterministic put_ and scatter_reduce: indices are sorted once, then every run of equal indices is reduced in order.

torch's CUDA put_ (accumulate) and scatter_reduce (prod, amax/amin on floats with duplicates, ...)
combine duplicate indices with atomics, so the order of float operations changes from run to run.
"""
from __future__ import annotations

import math

import torch

from detrun.patches._common import with_out
from detrun.patches._core import Kernel, Patch


def _flat_positions(index: torch.Tensor, numel: int) -> torch.Tensor:
    """Return int64 positions into a flattened tensor of ``numel`` elements, wrapping negatives like put_."""
    positions = index.reshape(-1).to(torch.int64)
    positions = torch.where(positions < 0, positions + numel, positions)
    # Still negative means out of range; send it past the end so index_put_ raises instead of wrapping again.
    return torch.where(positions < 0, torch.full_like(positions, numel), positions)


def last_of_each_run(positions: torch.Tensor) -> torch.Tensor:
    """Return, for the distinct values of ``positions``, the index of their last occurrence (last writer wins)."""
    sorted_positions, order = torch.sort(positions, stable=True)
    is_last = torch.ones_like(sorted_positions, dtype=torch.bool)
    if sorted_positions.numel() > 1:
        is_last[:-1] = sorted_positions[1:] != sorted_positions[:-1]
    return order[is_last]


def put_(self: torch.Tensor, index: torch.Tensor, source: torch.Tensor, accumulate: bool = False) -> torch.Tensor:
    """Write (or add, with ``accumulate``) ``source`` into ``self`` at flat ``index`` positions, in a fixed order."""
    if index.numel() != source.numel():
        raise IndexError(
            f"put_(): Expected source and index to have the same number of elements, but got "
            f"source.numel() = {source.numel()}, index.numel() = {index.numel()}"
        )
    if source.dtype != self.dtype:
        raise RuntimeError(
            f"put_(): self and source expected to have the same dtype, but got self.dtype = {self.dtype} "
            f"and source.dtype = {source.dtype}"
        )
    if index.numel() == 0:
        return self
    # put_ addresses self as if it were contiguous, whatever its strides.
    target = self.view(-1) if self.is_contiguous() else self.contiguous().view(-1)
    positions = _flat_positions(index, self.numel())
    values = source.reshape(-1)
    if accumulate:
        # index_put_ accumulate sorts the positions and sums each run sequentially: no atomics.
        target.index_put_((positions,), values, accumulate=True)
    else:
        # With duplicates, keep the last write in index order, as a sequential put_ would.
        keep = last_of_each_run(positions)
        target.index_put_((positions[keep],), values[keep])
    if not self.is_contiguous():
        self.copy_(target.view(self.shape))
    return self


def _scatter_targets(self: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """Return the flat position in ``self`` that each element of ``index`` addresses along ``dim``."""
    strides = [math.prod(self.shape[d + 1 :]) for d in range(self.dim())]
    positions = index.to(torch.int64) * strides[dim]
    for d in range(index.dim()):
        if d == dim:
            continue
        shape = [1] * index.dim()
        shape[d] = index.shape[d]
        positions = positions + (torch.arange(index.shape[d], device=index.device) * strides[d]).view(shape)
    return positions.reshape(-1)


def _segmented_product(values: torch.Tensor, run_start: torch.Tensor) -> torch.Tensor:
    """Return the inclusive product scan of ``values`` restarted at each run; a fixed log-depth order."""
    # Hillis-Steele scan: step k multiplies by the element 2^k back when it lies in the same run.
    scanned = values.clone()
    positions = torch.arange(values.numel(), device=values.device)
    step = 1
    while step < values.numel():
        source = positions - step
        same_run = source >= run_start
        shifted = torch.where(same_run, scanned[source.clamp(min=0)], torch.ones_like(scanned))
        scanned = scanned * shifted
        step *= 2
    return scanned


def scatter_reduce(
    self: torch.Tensor,
    dim: int,
    index: torch.Tensor,
    src: torch.Tensor,
    reduce: str,
    *,
    include_self: bool = True,
) -> torch.Tensor:
    """Return ``self`` with ``src`` reduced in at ``index`` along ``dim`` (sum, prod, mean, amax, amin)."""
    if reduce not in ("sum", "prod", "mean", "amax", "amin"):
        raise RuntimeError(f"reduce argument must be either sum, prod, mean, amax or amin, got {reduce}")
    dim = dim % max(self.dim(), 1)
    result = self.clone(memory_format=torch.contiguous_format)
    if index.numel() == 0:
        return result
    if self.dim() == 0:
        return scatter_reduce(self.view(1), 0, index.view(1), src.view(1), reduce, include_self=include_self).view(())
    positions = _scatter_targets(self, dim, index)
    limits = [index.shape[d] for d in range(index.dim())]
    values = src[tuple(slice(0, n) for n in limits)].reshape(-1).to(self.dtype)
    # Positions sorted once (stable): each run of equal positions is one output element, in a fixed order.
    sorted_positions, order = torch.sort(positions, stable=True)
    values = values[order]
    run_first = torch.ones_like(sorted_positions, dtype=torch.bool)
    run_first[1:] = sorted_positions[1:] != sorted_positions[:-1]
    run_last = torch.ones_like(run_first)
    run_last[:-1] = run_first[1:]
    targets = sorted_positions[run_last]
    flat = result.view(-1)
    if reduce in ("sum", "mean"):
        acc = torch.float64 if self.dtype == torch.float64 else (torch.float32 if self.is_floating_point() else torch.int64)
        run_id = torch.cumsum(run_first.to(torch.int64), 0) - 1
        runs = int(run_first.sum())
        totals = torch.zeros(runs, dtype=acc, device=self.device).index_put_((run_id,), values.to(acc), accumulate=True)
        counts = torch.zeros(runs, dtype=torch.int64, device=self.device).index_put_(
            (run_id,), torch.ones_like(run_id), accumulate=True
        )
        if include_self:
            totals = totals + flat[targets].to(acc)
            counts = counts + 1
        if reduce == "mean":
            totals = totals / counts if totals.is_floating_point() else torch.div(totals, counts, rounding_mode="floor")
        flat[targets] = totals.to(self.dtype)
        return result
    if reduce == "prod":
        run_start = torch.cummax(torch.where(run_first, torch.arange(run_first.numel(), device=self.device), 0), 0).values
        reduced = _segmented_product(values, run_start)[run_last]
        flat[targets] = reduced * flat[targets] if include_self else reduced
        return result
    # amax / amin: sort values inside each run, keep the extreme; NaN wins, as in aten.
    by_value, value_order = torch.sort(values, stable=True, descending=reduce == "amax")
    regroup = torch.sort(sorted_positions[value_order], stable=True).indices
    extremes = by_value[regroup][run_first]
    if self.is_floating_point():
        nan_count = torch.zeros(int(run_first.sum()), dtype=torch.int64, device=self.device)
        run_id = torch.cumsum(run_first.to(torch.int64), 0) - 1
        has_nan = nan_count.index_put_((run_id,), torch.isnan(values).to(torch.int64), accumulate=True) > 0
        extremes = torch.where(has_nan, torch.full_like(extremes, float("nan")), extremes)
    if include_self:
        combine = torch.maximum if reduce == "amax" else torch.minimum
        extremes = combine(extremes, flat[targets])
    flat[targets] = extremes
    return result


PATCHES: tuple[Patch, ...] = (
    Patch(
        name="put_accumulate",
        # Mirrors aten/src/ATen/native/cuda/IndexKernel.cu: put_kernel (native_functions.yaml: put_, dispatch
        # CPU, CUDA: put_). Covers accumulate=False too: with duplicate indices the last write wins.
        kernels=(
            Kernel(
                "put_",
                "aten::put_(Tensor(a!) self, Tensor index, Tensor source, bool accumulate=False) -> Tensor(a!)",
                put_,
            ),
        ),
        impl=put_,
        upstream="aten/src/ATen/native/cuda/IndexKernel.cu: put_kernel",
        min_torch=(2, 1),
        related_ops=("aten::put", "aten::take"),
        summary="index_put_ accumulate (sort + sequential run sums); last-writer-wins dedupe without accumulate",
    ),
    Patch(
        name="scatter_reduce",
        # Mirrors aten/src/ATen/native/cuda/ScatterGatherKernel.cu: scatter_reduce_two_kernel
        # (native_functions.yaml: scatter_reduce.two, structured scatter_reduce_two_out, dispatch CUDA).
        kernels=(
            Kernel(
                "scatter_reduce.two",
                "aten::scatter_reduce.two(Tensor self, int dim, Tensor index, Tensor src, str reduce, *, "
                "bool include_self=True) -> Tensor",
                scatter_reduce,
            ),
            Kernel(
                "scatter_reduce.two_out",
                "aten::scatter_reduce.two_out(Tensor self, int dim, Tensor index, Tensor src, str reduce, *, "
                "bool include_self=True, Tensor(a!) out) -> Tensor(a!)",
                with_out(scatter_reduce),
            ),
        ),
        impl=scatter_reduce,
        upstream="aten/src/ATen/native/cuda/ScatterGatherKernel.cu: scatter_reduce_two_kernel",
        min_torch=(2, 1),
        summary="stable sort of target positions, then per-run sums / log-depth products / sorted extremes",
    ),
)
