"""Deterministic upsample backward (linear, bilinear, bicubic, trilinear): GEMMs with per-axis interpolation matrices.

Interpolation is separable, so the forward is ``out = M_h x M_w^T`` with one small dense matrix
per axis, and the backward is ``grad_in = M_h^T grad_out M_w``: deterministic GEMMs instead of
aten's atomicAdd scatter (aten/src/ATen/native/cuda/UpSample*.cu, *_backward_out_frame kernels).
The matrices use aten's own coordinate arithmetic (UpSample.h: area_pixel_compute_scale,
area_pixel_compute_source_index) in acc_type: float32 for half types, float64 for double.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from detrun.patches._common import AxisMap, apply_axis_maps, axis_map, compute_dtype, matrix_cache, with_out
from detrun.patches._core import Kernel, Patch
from detrun.patches.grid_sample import _cubic_coefficients


def _scale(in_size: int, out_size: int, align_corners: bool, scale: float | None, dtype: torch.dtype) -> float:
    """Return aten's area_pixel_compute_scale, rounded to ``dtype`` like aten's accscalar_t."""
    if align_corners:
        value = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    elif scale is not None and scale > 0:
        value = 1.0 / scale
    else:
        value = in_size / out_size
    return float(torch.tensor(value, dtype=dtype))


def _source_index(
    in_size: int, out_size: int, align_corners: bool, scale: float | None, cubic: bool, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Return aten's area_pixel_compute_source_index for every output position."""
    ratio = _scale(in_size, out_size, align_corners, scale, dtype)
    dst = torch.arange(out_size, dtype=dtype, device=device)
    if align_corners:
        return dst * ratio
    src = (dst + 0.5) * ratio - 0.5
    # Linear modes never read left of pixel 0; cubic keeps the negative coordinate and clamps taps instead.
    return src if cubic else src.clamp(min=0)


@matrix_cache
def linear_matrix(
    in_size: int, out_size: int, align_corners: bool, scale: float | None, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Return the (out, in) linear interpolation matrix along one axis."""
    src = _source_index(in_size, out_size, align_corners, scale, False, dtype, device)
    left = src.to(torch.int64)  # src >= 0, so truncation is floor, as aten's (int) cast
    right = torch.where(left < in_size - 1, left + 1, left)
    right_weight = src - left.to(dtype)
    matrix = torch.zeros(out_size, in_size, dtype=dtype, device=device)
    rows = torch.arange(out_size, device=device)
    # index_put_ accumulate: when left == right both weights land on the same cell and add up to 1.
    matrix.index_put_((rows, left), 1 - right_weight, accumulate=True)
    matrix.index_put_((rows, right), right_weight, accumulate=True)
    return matrix


@matrix_cache
def cubic_matrix(
    in_size: int, out_size: int, align_corners: bool, scale: float | None, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Return the (out, in) bicubic interpolation matrix along one axis (A = -0.75, taps clamped to the edge)."""
    src = _source_index(in_size, out_size, align_corners, scale, True, dtype, device)
    base = torch.floor(src)
    weights, _ = _cubic_coefficients(src - base)
    base = base.to(torch.int64)
    matrix = torch.zeros(out_size, in_size, dtype=dtype, device=device)
    rows = torch.arange(out_size, device=device)
    for tap, weight in enumerate(weights):
        column = (base - 1 + tap).clamp(0, in_size - 1)
        matrix.index_put_((rows, column), weight, accumulate=True)
    return matrix


@matrix_cache
def backward_map(
    builder: Callable[..., torch.Tensor],
    in_size: int,
    out_size: int,
    align_corners: bool,
    scale: float | None,
    dtype: torch.dtype,
    device: torch.device,
) -> AxisMap:
    """Return the transposed interpolation matrix (in, out) of one axis: the backward map."""
    return axis_map(builder(in_size, out_size, align_corners, scale, dtype, device).t())


def _upsample_backward(
    grad_output: torch.Tensor,
    output_size: Sequence[int],
    input_size: Sequence[int],
    align_corners: bool,
    scales: Sequence[float | None],
    builder: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """Return grad_input = (per-axis interpolation matrices)^T applied to grad_output."""
    spatial = len(output_size)
    acc = compute_dtype(grad_output.dtype)
    maps = [
        backward_map(builder, int(input_size[-spatial + axis]), int(output_size[axis]), align_corners, scales[axis], acc, grad_output.device)
        for axis in range(spatial)
    ]
    channels_last = grad_output.dim() == 4 and grad_output.is_contiguous(memory_format=torch.channels_last) and not grad_output.is_contiguous()
    grad = apply_axis_maps(grad_output.to(acc), maps, channels_last=channels_last)
    return grad.to(grad_output.dtype).view(*[int(s) for s in input_size]) if grad.is_contiguous() else grad.to(grad_output.dtype)


def upsample_linear1d_backward(
    grad_output: torch.Tensor,
    output_size: Sequence[int],
    input_size: Sequence[int],
    align_corners: bool,
    scales: float | None = None,
) -> torch.Tensor:
    """Return grad_input of upsample_linear1d."""
    return _upsample_backward(grad_output, output_size, input_size, align_corners, (scales,), linear_matrix)


def upsample_bilinear2d_backward(
    grad_output: torch.Tensor,
    output_size: Sequence[int],
    input_size: Sequence[int],
    align_corners: bool,
    scales_h: float | None = None,
    scales_w: float | None = None,
) -> torch.Tensor:
    """Return grad_input of upsample_bilinear2d."""
    return _upsample_backward(grad_output, output_size, input_size, align_corners, (scales_h, scales_w), linear_matrix)


def upsample_bicubic2d_backward(
    grad_output: torch.Tensor,
    output_size: Sequence[int],
    input_size: Sequence[int],
    align_corners: bool,
    scales_h: float | None = None,
    scales_w: float | None = None,
) -> torch.Tensor:
    """Return grad_input of upsample_bicubic2d."""
    return _upsample_backward(grad_output, output_size, input_size, align_corners, (scales_h, scales_w), cubic_matrix)


def upsample_trilinear3d_backward(
    grad_output: torch.Tensor,
    output_size: Sequence[int],
    input_size: Sequence[int],
    align_corners: bool,
    scales_d: float | None = None,
    scales_h: float | None = None,
    scales_w: float | None = None,
) -> torch.Tensor:
    """Return grad_input of upsample_trilinear3d."""
    return _upsample_backward(
        grad_output, output_size, input_size, align_corners, (scales_d, scales_h, scales_w), linear_matrix
    )


def _patch(name: str, op: str, args: str, fn: Callable[..., torch.Tensor], source: str, forward: str) -> Patch:
    """Build the patch for one upsample backward op and its .grad_input overload."""
    return Patch(
        name=name,
        kernels=(
            Kernel(op, f"aten::{op}({args}) -> Tensor", fn),
            Kernel(
                f"{op}.grad_input",
                f"aten::{op}.grad_input({args}, *, Tensor(a!) grad_input) -> Tensor(a!)",
                with_out(fn),
            ),
        ),
        impl=fn,
        upstream=source,
        min_torch=(2, 1),
        related_ops=(f"aten::{forward}", f"aten::{forward}.vec"),
        summary="one GEMM per axis with the transposed interpolation matrix",
    )


PATCHES: tuple[Patch, ...] = (
    # Mirrors aten/src/ATen/native/cuda/UpSampleBilinear2d.cu: upsample_bilinear2d_backward_out_cuda
    # (native_functions.yaml: upsample_bilinear2d_backward.grad_input, structured, dispatch CUDA).
    _patch(
        "upsample_bilinear2d_backward",
        "upsample_bilinear2d_backward",
        "Tensor grad_output, SymInt[2] output_size, SymInt[4] input_size, bool align_corners, "
        "float? scales_h=None, float? scales_w=None",
        upsample_bilinear2d_backward,
        "aten/src/ATen/native/cuda/UpSampleBilinear2d.cu: upsample_bilinear2d_backward_out_cuda",
        "upsample_bilinear2d",
    ),
    # Mirrors aten/src/ATen/native/cuda/UpSampleLinear1d.cu: upsample_linear1d_backward_out_cuda.
    _patch(
        "upsample_linear1d_backward",
        "upsample_linear1d_backward",
        "Tensor grad_output, SymInt[1] output_size, SymInt[3] input_size, bool align_corners, float? scales=None",
        upsample_linear1d_backward,
        "aten/src/ATen/native/cuda/UpSampleLinear1d.cu: upsample_linear1d_backward_out_cuda",
        "upsample_linear1d",
    ),
    # Mirrors aten/src/ATen/native/cuda/UpSampleBicubic2d.cu: upsample_bicubic2d_backward_out_cuda.
    _patch(
        "upsample_bicubic2d_backward",
        "upsample_bicubic2d_backward",
        "Tensor grad_output, SymInt[2] output_size, SymInt[4] input_size, bool align_corners, "
        "float? scales_h=None, float? scales_w=None",
        upsample_bicubic2d_backward,
        "aten/src/ATen/native/cuda/UpSampleBicubic2d.cu: upsample_bicubic2d_backward_out_cuda",
        "upsample_bicubic2d",
    ),
    # Mirrors aten/src/ATen/native/cuda/UpSampleTrilinear3d.cu: upsample_trilinear3d_backward_out_cuda.
    _patch(
        "upsample_trilinear3d_backward",
        "upsample_trilinear3d_backward",
        "Tensor grad_output, SymInt[3] output_size, SymInt[5] input_size, bool align_corners, "
        "float? scales_d=None, float? scales_h=None, float? scales_w=None",
        upsample_trilinear3d_backward,
        "aten/src/ATen/native/cuda/UpSampleTrilinear3d.cu: upsample_trilinear3d_backward_out_cuda",
        "upsample_trilinear3d",
    ),
)
