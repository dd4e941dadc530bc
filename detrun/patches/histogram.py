"""Deterministic bincount and histc: bin indices first, then one sorted scatter sum instead of atomics.

torch's CUDA kernels (aten/src/ATen/native/cuda/SummaryOps.cu) add into the bins with atomics from
many blocks, so float sums come out in a different order each run; they raise in deterministic mode.
"""
from __future__ import annotations

import math

import torch

from detrun.patches._common import compute_dtype, deterministic_scatter_sum, with_out
from detrun.patches._core import Kernel, Patch


def bincount(self: torch.Tensor, weights: torch.Tensor | None = None, minlength: int = 0) -> torch.Tensor:
    """Count (or sum ``weights`` of) each non-negative integer in the 1-D ``self``."""
    if minlength < 0:
        raise RuntimeError("minlength should be >= 0")
    if self.dim() == 1 and self.numel() == 0:
        return torch.zeros(minlength, dtype=torch.int64, device=self.device)
    if self.dim() != 1 or self.is_floating_point() or self.is_complex():
        raise RuntimeError("bincount only supports 1-d non-negative integral inputs.")
    # Like aten, read the extremes on the host: the output length depends on the data.
    if self.dtype != torch.uint8 and int(self.min()) < 0:
        raise RuntimeError("bincount only supports 1-d non-negative integral inputs.")
    if weights is not None and (weights.dim() != 1 or weights.shape[0] != self.shape[0]):
        raise RuntimeError("weights should be 1-d and have the same length as input")
    nbins = max(int(self.max()) + 1, minlength)
    index = self.to(torch.int64)
    if weights is None:
        # Integer sums are exact in any order, but index_put_ keeps this path free of atomics too.
        ones = torch.ones(index.shape[0], dtype=torch.int64, device=self.device)
        return deterministic_scatter_sum(nbins, index, ones)
    # aten keeps float32 weights in float32 and turns every other dtype into float64.
    out_dtype = torch.float32 if weights.dtype == torch.float32 else torch.float64
    return deterministic_scatter_sum(nbins, index, weights.to(out_dtype))


def histc(self: torch.Tensor, bins: int = 100, min: float = 0, max: float = 0) -> torch.Tensor:
    """Return the ``bins``-bin histogram of ``self`` over [min, max] (data range when min == max)."""
    if bins <= 0:
        raise RuntimeError("torch.histc: bins must be > 0")
    acc = compute_dtype(self.dtype) if self.is_floating_point() else torch.float64
    low, high = float(min), float(max)
    if low == high and self.numel() > 0:
        low, high = float(self.min()), float(self.max())
    if low == high:
        low, high = low - 1, high + 1
    if not (math.isfinite(low) and math.isfinite(high)):
        raise RuntimeError(f"torch.histc: range of [{low}, {high}] is not finite")
    if not low < high:
        raise RuntimeError("torch.histc: max must be larger than min")
    values = self.reshape(-1).to(acc)
    # NaN fails both comparisons, so it is dropped, as in aten.
    inside = (values >= low) & (values <= high)
    # aten's getBin: (int)((x - min) * nbins / (max - min)), and x == max goes into the last bin.
    scaled = (values - low) * bins / (high - low)
    index = torch.where(inside, scaled.clamp(0, bins), torch.full_like(scaled, bins)).to(torch.int64)
    index = torch.where(inside, index.clamp(max=bins - 1), index)
    # Values outside [min, max] land in a spare last bin that is dropped: no data-dependent host sync.
    counts = deterministic_scatter_sum(bins + 1, index, torch.ones_like(index))
    return counts[:bins].to(self.dtype)


PATCHES: tuple[Patch, ...] = (
    Patch(
        name="bincount",
        # Mirrors aten/src/ATen/native/cuda/SummaryOps.cu: _bincount_cuda
        # (native_functions.yaml: bincount, dispatch CUDA: _bincount_cuda).
        kernels=(
            Kernel(
                "bincount",
                "aten::bincount(Tensor self, Tensor? weights=None, SymInt minlength=0) -> Tensor",
                bincount,
            ),
        ),
        impl=bincount,
        upstream="aten/src/ATen/native/cuda/SummaryOps.cu: _bincount_cuda",
        min_torch=(2, 1),
        summary="sorted scatter sum (index_put_ accumulate) of the weights",
    ),
    Patch(
        name="histc",
        # Mirrors aten/src/ATen/native/cuda/SummaryOps.cu: _histc_cuda / _histc_out_cuda
        # (native_functions.yaml: histc, histc.out, dispatch CUDA).
        kernels=(
            Kernel("histc", "aten::histc(Tensor self, int bins=100, Scalar min=0, Scalar max=0) -> Tensor", histc),
            Kernel(
                "histc.out",
                "aten::histc.out(Tensor self, int bins=100, Scalar min=0, Scalar max=0, *, Tensor(a!) out) -> Tensor(a!)",
                with_out(histc),
            ),
        ),
        impl=histc,
        upstream="aten/src/ATen/native/cuda/SummaryOps.cu: _histc_cuda",
        min_torch=(2, 1),
        summary="bin index per element, then a sorted scatter count",
    ),
)
