"""Deterministic median / nanmedian along a dim: a stable sort, then one gather at the median rank.

torch's CUDA kernel (aten/src/ATen/native/cuda/Sorting.cpp: median_with_indices_impl) may report
any of several equal elements' indices, so it raises in deterministic mode. A stable sort fixes
the choice: among equal values the one at the median rank in index order.
"""
from __future__ import annotations

import torch

from detrun.patches._common import with_out
from detrun.patches._core import Kernel, Patch


def _median_dim(self: torch.Tensor, dim: int, keepdim: bool, ignore_nan: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (values, indices) of the lower median along ``dim``; NaN propagates unless ``ignore_nan``."""
    name = "nanmedian" if ignore_nan else "median"
    if self.dim() == 0:
        return self.clone(), torch.zeros((), dtype=torch.int64, device=self.device)
    dim = dim % self.dim()
    size = self.shape[dim]
    if size == 0:
        raise IndexError(f"{name}(): Expected reduction dim {dim} to have non-zero size.")
    # torch.sort orders NaN after every number, on CPU and CUDA alike.
    sorted_values, order = torch.sort(self, dim=dim, stable=True)
    if self.is_floating_point():
        nan_count = torch.isnan(self).sum(dim=dim, keepdim=True)
        if ignore_nan:
            valid = size - nan_count
            # All-NaN rows report their first NaN, at rank 0.
            rank = torch.where(valid > 0, (valid - 1) // 2, torch.zeros_like(valid))
        else:
            # Any NaN makes the median NaN; report the first NaN (the first one after the numbers).
            rank = torch.where(nan_count > 0, size - nan_count, torch.full_like(nan_count, (size - 1) // 2))
    else:
        shape = list(self.shape)
        shape[dim] = 1
        rank = torch.full(shape, (size - 1) // 2, dtype=torch.int64, device=self.device)
    values = sorted_values.gather(dim, rank)
    indices = order.gather(dim, rank)
    if not keepdim:
        values, indices = values.squeeze(dim), indices.squeeze(dim)
    return values, indices


def median_dim(self: torch.Tensor, dim: int, keepdim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (values, indices) of torch.median along ``dim``."""
    return _median_dim(self, dim, keepdim, ignore_nan=False)


def nanmedian_dim(self: torch.Tensor, dim: int, keepdim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (values, indices) of torch.nanmedian along ``dim``."""
    return _median_dim(self, dim, keepdim, ignore_nan=True)


PATCHES: tuple[Patch, ...] = (
    Patch(
        name="median_dim",
        # Mirrors aten/src/ATen/native/cuda/Sorting.cpp: median_with_indices_impl
        # (native_functions.yaml: median.dim -> median.dim_values, dispatch CUDA: median_out_cuda).
        kernels=(
            Kernel(
                "median.dim",
                "aten::median.dim(Tensor self, int dim, bool keepdim=False) -> (Tensor values, Tensor indices)",
                median_dim,
            ),
            Kernel(
                "median.dim_values",
                "aten::median.dim_values(Tensor self, int dim, bool keepdim=False, *, Tensor(a!) values, "
                "Tensor(b!) indices) -> (Tensor(a!) values, Tensor(b!) indices)",
                with_out(median_dim, n_out=2),
            ),
        ),
        impl=median_dim,
        upstream="aten/src/ATen/native/cuda/Sorting.cpp: median_with_indices_impl",
        min_torch=(2, 1),
        summary="stable sort along dim, gather at the median rank",
    ),
    Patch(
        name="nanmedian_dim",
        # Mirrors aten/src/ATen/native/cuda/Sorting.cpp: median_with_indices_impl(ignore_nan=true)
        # (native_functions.yaml: nanmedian.dim -> nanmedian.dim_values, dispatch CUDA: nanmedian_out_cuda).
        kernels=(
            Kernel(
                "nanmedian.dim",
                "aten::nanmedian.dim(Tensor self, int dim, bool keepdim=False) -> (Tensor values, Tensor indices)",
                nanmedian_dim,
            ),
            Kernel(
                "nanmedian.dim_values",
                "aten::nanmedian.dim_values(Tensor self, int dim, bool keepdim=False, *, Tensor(a!) values, "
                "Tensor(b!) indices) -> (Tensor(a!) values, Tensor(b!) indices)",
                with_out(nanmedian_dim, n_out=2),
            ),
        ),
        impl=nanmedian_dim,
        upstream="aten/src/ATen/native/cuda/Sorting.cpp: median_with_indices_impl",
        min_torch=(2, 1),
        summary="stable sort along dim, gather at the median rank of the non-NaN values",
    ),
)
