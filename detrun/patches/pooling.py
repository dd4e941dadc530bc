"""Deterministic pooling backward kernels: averaging as products with pooling matrices, max as sorted scatter sums.

torch's CUDA kernels for these add into grad_input with atomics and call ``alertNotDeterministic``, so
they raise under ``torch.use_deterministic_algorithms(True)`` (DESIGN.md, H100 table).
"""
from __future__ import annotations

from typing import Sequence

import torch

from detrun.patches._common import (
    AxisMap,
    apply_axis_maps,
    axis_map,
    compute_dtype,
    matrix_cache,
    scatter_sum_into_planes,
    with_out,
)
from detrun.patches._core import Kernel, Patch


@matrix_cache
def adaptive_pool_matrix(in_size: int, out_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Return the (out, in) averaging matrix of adaptive pooling along one axis."""
    # Same window bounds as aten's start_index/end_index: floor(i*in/out) .. ceil((i+1)*in/out).
    rows = torch.arange(out_size, device=device, dtype=torch.int64)
    starts = (rows * in_size) // out_size
    ends = ((rows + 1) * in_size + out_size - 1) // out_size
    cols = torch.arange(in_size, device=device, dtype=torch.int64)
    inside = (cols >= starts[:, None]) & (cols < ends[:, None])
    return inside.to(dtype) / (ends - starts).to(dtype)[:, None]


@matrix_cache
def avg_pool_matrix(
    in_size: int,
    out_size: int,
    kernel: int,
    stride: int,
    padding: int,
    count_include_pad: bool,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Return the (out, in) averaging matrix of avg_pool along one axis (divisor_override applied by the caller)."""
    rows = torch.arange(out_size, device=device, dtype=torch.int64)
    starts = rows * stride - padding
    ends = torch.clamp(starts + kernel, max=in_size + padding)
    padded_len = ends - starts  # aten's pool_size counts the padding cells inside the window
    starts = starts.clamp(min=0)
    ends = ends.clamp(max=in_size)
    cols = torch.arange(in_size, device=device, dtype=torch.int64)
    inside = (cols >= starts[:, None]) & (cols < ends[:, None])
    divisor = padded_len if count_include_pad else (ends - starts)
    return inside.to(dtype) / divisor.to(dtype)[:, None]


@matrix_cache
def adaptive_pool_backward_map(in_size: int, out_size: int, dtype: torch.dtype, device: torch.device) -> AxisMap:
    """Return the transposed adaptive averaging matrix (in, out): the backward map along one axis."""
    return axis_map(adaptive_pool_matrix(in_size, out_size, dtype, device).t())


@matrix_cache
def avg_pool_backward_map(
    in_size: int,
    out_size: int,
    kernel: int,
    stride: int,
    padding: int,
    count_include_pad: bool,
    divisor_override: bool,
    dtype: torch.dtype,
    device: torch.device,
) -> AxisMap:
    """Return the transposed avg_pool matrix (in, out); with ``divisor_override`` only the window indicator."""
    matrix = avg_pool_matrix(in_size, out_size, kernel, stride, padding, count_include_pad, dtype, device)
    if divisor_override:
        matrix = (matrix != 0).to(dtype)
    return axis_map(matrix.t())


def _channels_last(tensor: torch.Tensor) -> bool:
    """Return whether a 4-D/5-D tensor is laid out channels-last (torch keeps that layout for grad_input)."""
    if tensor.dim() == 4:
        return tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()
    if tensor.dim() == 5:
        return tensor.is_contiguous(memory_format=torch.channels_last_3d) and not tensor.is_contiguous()
    return False


def _restore_layout(grad_input: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Return ``grad_input`` in ``like``'s memory format, as torch's kernels do."""
    if _channels_last(like):
        fmt = torch.channels_last if like.dim() == 4 else torch.channels_last_3d
        return grad_input.contiguous(memory_format=fmt)
    return grad_input.contiguous()


def _adaptive_avg_backward(grad_output: torch.Tensor, self: torch.Tensor, spatial: int) -> torch.Tensor:
    """Return grad_input of adaptive average pooling over the last ``spatial`` axes."""
    acc = compute_dtype(grad_output.dtype)
    # Backward of out = P x is grad_in = P^T grad_out, axis by axis.
    maps = [
        adaptive_pool_backward_map(self.shape[-spatial + axis], grad_output.shape[-spatial + axis], acc, grad_output.device)
        for axis in range(spatial)
    ]
    grad = apply_axis_maps(grad_output.to(acc), maps, channels_last=_channels_last(self))
    return _restore_layout(grad.to(grad_output.dtype), self)


def adaptive_avg_pool2d_backward(grad_output: torch.Tensor, self: torch.Tensor) -> torch.Tensor:
    """Return grad_input of adaptive_avg_pool2d as grad_output multiplied by the transposed pooling matrices."""
    return _adaptive_avg_backward(grad_output, self, 2)


def adaptive_avg_pool3d_backward(grad_output: torch.Tensor, self: torch.Tensor) -> torch.Tensor:
    """Return grad_input of adaptive_avg_pool3d as grad_output multiplied by the transposed pooling matrices."""
    return _adaptive_avg_backward(grad_output, self, 3)


def avg_pool3d_backward(
    grad_output: torch.Tensor,
    self: torch.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> torch.Tensor:
    """Return grad_input of avg_pool3d; the window divisor factorises per axis, so the pool is three matrices."""
    kernel = _triple(kernel_size)
    strides = _triple(stride) if len(stride) else kernel  # an empty stride means stride = kernel_size
    pads = _triple(padding)
    acc = compute_dtype(grad_output.dtype)
    maps = [
        avg_pool_backward_map(
            self.shape[-3 + axis],
            grad_output.shape[-3 + axis],
            kernel[axis],
            strides[axis],
            pads[axis],
            count_include_pad,
            divisor_override is not None,
            acc,
            grad_output.device,
        )
        for axis in range(3)
    ]
    grad = grad_output.to(acc)
    if divisor_override is not None:
        # aten divides every window by the one override: the per-axis maps are plain window indicators.
        grad = grad / divisor_override
    grad = apply_axis_maps(grad, maps)
    return _restore_layout(grad.to(grad_output.dtype), self)


def _triple(values: Sequence[int]) -> tuple[int, int, int]:
    """Expand a 1- or 3-element size argument to three values."""
    values = list(values)
    return (values[0],) * 3 if len(values) == 1 else (values[0], values[1], values[2])


def _indices_backward(grad_output: torch.Tensor, self: torch.Tensor, indices: torch.Tensor, spatial: int) -> torch.Tensor:
    """Return grad_input of a pool that reports argmax offsets per input plane."""
    grad = scatter_sum_into_planes(grad_output, indices, self.shape, spatial)
    return _restore_layout(grad, self)


def adaptive_max_pool2d_backward(grad_output: torch.Tensor, self: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Return grad_input of adaptive_max_pool2d by a sorted scatter sum at the argmax offsets."""
    return _indices_backward(grad_output, self, indices, 2)


def adaptive_max_pool3d_backward(grad_output: torch.Tensor, self: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Return grad_input of adaptive_max_pool3d by a sorted scatter sum at the argmax offsets."""
    return _indices_backward(grad_output, self, indices, 3)


def max_pool3d_with_indices_backward(
    grad_output: torch.Tensor,
    self: torch.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    ceil_mode: bool,
    indices: torch.Tensor,
) -> torch.Tensor:
    """Return grad_input of max_pool3d; the window geometry is already encoded in ``indices``."""
    return _indices_backward(grad_output, self, indices, 3)


def fractional_max_pool2d_backward(
    grad_output: torch.Tensor,
    self: torch.Tensor,
    kernel_size: Sequence[int],
    output_size: Sequence[int],
    indices: torch.Tensor,
) -> torch.Tensor:
    """Return grad_input of fractional_max_pool2d by a sorted scatter sum at the argmax offsets."""
    return _indices_backward(grad_output, self, indices, 2)


def fractional_max_pool3d_backward(
    grad_output: torch.Tensor,
    self: torch.Tensor,
    kernel_size: Sequence[int],
    output_size: Sequence[int],
    indices: torch.Tensor,
) -> torch.Tensor:
    """Return grad_input of fractional_max_pool3d by a sorted scatter sum at the argmax offsets."""
    return _indices_backward(grad_output, self, indices, 3)


_AVG3D_ARGS = (
    "Tensor grad_output, Tensor self, int[3] kernel_size, int[3] stride, int[3] padding, bool ceil_mode, "
    "bool count_include_pad, int? divisor_override"
)
_MAX3D_ARGS = (
    "Tensor grad_output, Tensor self, int[3] kernel_size, int[3] stride, int[3] padding, int[3] dilation, "
    "bool ceil_mode, Tensor indices"
)

PATCHES: tuple[Patch, ...] = (
    Patch(
        name="adaptive_avg_pool2d_backward",
        # Mirrors aten/src/ATen/native/cuda/AdaptiveAveragePooling.cu: adaptive_avg_pool2d_backward_cuda
        # (native_functions.yaml: _adaptive_avg_pool2d_backward, dispatch CUDA). Schema stable since torch 1.x.
        kernels=(
            Kernel(
                "_adaptive_avg_pool2d_backward",
                "aten::_adaptive_avg_pool2d_backward(Tensor grad_output, Tensor self) -> Tensor",
                adaptive_avg_pool2d_backward,
            ),
            Kernel(
                "_adaptive_avg_pool2d_backward.out",
                "aten::_adaptive_avg_pool2d_backward.out(Tensor grad_output, Tensor self, *, Tensor(a!) out) -> Tensor(a!)",
                with_out(adaptive_avg_pool2d_backward),
            ),
        ),
        impl=adaptive_avg_pool2d_backward,
        upstream="aten/src/ATen/native/cuda/AdaptiveAveragePooling.cu: adaptive_avg_pool2d_backward_cuda",
        min_torch=(2, 1),
        related_ops=("aten::adaptive_avg_pool2d", "aten::_adaptive_avg_pool2d"),
        summary="pooling matrices: grad_in = P_h^T grad_out P_w (one Kronecker GEMM for small outputs)",
    ),
    Patch(
        name="adaptive_avg_pool3d_backward",
        # Mirrors aten/src/ATen/native/cuda/AdaptiveAveragePooling3d.cu: adaptive_avg_pool3d_backward_cuda.
        kernels=(
            Kernel(
                "_adaptive_avg_pool3d_backward",
                "aten::_adaptive_avg_pool3d_backward(Tensor grad_output, Tensor self) -> Tensor",
                adaptive_avg_pool3d_backward,
            ),
            Kernel(
                "_adaptive_avg_pool3d_backward.out",
                "aten::_adaptive_avg_pool3d_backward.out(Tensor grad_output, Tensor self, *, Tensor(a!) out) -> Tensor(a!)",
                with_out(adaptive_avg_pool3d_backward),
            ),
        ),
        impl=adaptive_avg_pool3d_backward,
        upstream="aten/src/ATen/native/cuda/AdaptiveAveragePooling3d.cu: adaptive_avg_pool3d_backward_cuda",
        min_torch=(2, 1),
        related_ops=("aten::adaptive_avg_pool3d", "aten::_adaptive_avg_pool3d"),
        summary="pooling matrices per axis",
    ),
    Patch(
        name="adaptive_max_pool2d_backward",
        # Mirrors aten/src/ATen/native/cuda/AdaptiveMaxPooling2d.cu: adaptive_max_pool2d_backward_out_cuda.
        kernels=(
            Kernel(
                "adaptive_max_pool2d_backward",
                "aten::adaptive_max_pool2d_backward(Tensor grad_output, Tensor self, Tensor indices) -> Tensor",
                adaptive_max_pool2d_backward,
            ),
            Kernel(
                "adaptive_max_pool2d_backward.grad_input",
                "aten::adaptive_max_pool2d_backward.grad_input(Tensor grad_output, Tensor self, Tensor indices, *, "
                "Tensor(a!) grad_input) -> Tensor(a!)",
                with_out(adaptive_max_pool2d_backward),
            ),
        ),
        impl=adaptive_max_pool2d_backward,
        upstream="aten/src/ATen/native/cuda/AdaptiveMaxPooling2d.cu: adaptive_max_pool2d_backward_out_cuda",
        min_torch=(2, 1),
        related_ops=("aten::adaptive_max_pool2d",),
        summary="sorted scatter sum (index_put_ accumulate) at the argmax offsets",
    ),
    Patch(
        name="adaptive_max_pool3d_backward",
        # Mirrors aten/src/ATen/native/cuda/AdaptiveMaxPooling3d.cu: adaptive_max_pool3d_backward_out_cuda.
        kernels=(
            Kernel(
                "adaptive_max_pool3d_backward",
                "aten::adaptive_max_pool3d_backward(Tensor grad_output, Tensor self, Tensor indices) -> Tensor",
                adaptive_max_pool3d_backward,
            ),
            Kernel(
                "adaptive_max_pool3d_backward.grad_input",
                "aten::adaptive_max_pool3d_backward.grad_input(Tensor grad_output, Tensor self, Tensor indices, *, "
                "Tensor(a!) grad_input) -> Tensor(a!)",
                with_out(adaptive_max_pool3d_backward),
            ),
        ),
        impl=adaptive_max_pool3d_backward,
        upstream="aten/src/ATen/native/cuda/AdaptiveMaxPooling3d.cu: adaptive_max_pool3d_backward_out_cuda",
        min_torch=(2, 1),
        related_ops=("aten::adaptive_max_pool3d",),
        summary="sorted scatter sum at the argmax offsets",
    ),
    Patch(
        name="max_pool3d_backward",
        # Mirrors aten/src/ATen/native/cuda/DilatedMaxPool3d.cu: max_pool3d_with_indices_backward_out_cuda.
        kernels=(
            Kernel(
                "max_pool3d_with_indices_backward",
                f"aten::max_pool3d_with_indices_backward({_MAX3D_ARGS}) -> Tensor",
                max_pool3d_with_indices_backward,
            ),
            Kernel(
                "max_pool3d_with_indices_backward.grad_input",
                f"aten::max_pool3d_with_indices_backward.grad_input({_MAX3D_ARGS}, *, Tensor(a!) grad_input) -> Tensor(a!)",
                with_out(max_pool3d_with_indices_backward),
            ),
        ),
        impl=max_pool3d_with_indices_backward,
        upstream="aten/src/ATen/native/cuda/DilatedMaxPool3d.cu: max_pool3d_with_indices_backward_out_cuda",
        min_torch=(2, 1),
        related_ops=("aten::max_pool3d", "aten::max_pool3d_with_indices"),
        summary="sorted scatter sum at the argmax offsets",
    ),
    Patch(
        name="avg_pool3d_backward",
        # Mirrors aten/src/ATen/native/cuda/AveragePool3d.cu: avg_pool3d_backward_out_cuda.
        kernels=(
            Kernel("avg_pool3d_backward", f"aten::avg_pool3d_backward({_AVG3D_ARGS}) -> Tensor", avg_pool3d_backward),
            Kernel(
                "avg_pool3d_backward.grad_input",
                f"aten::avg_pool3d_backward.grad_input({_AVG3D_ARGS}, *, Tensor(a!) grad_input) -> Tensor(a!)",
                with_out(avg_pool3d_backward),
            ),
        ),
        impl=avg_pool3d_backward,
        upstream="aten/src/ATen/native/cuda/AveragePool3d.cu: avg_pool3d_backward_out_cuda",
        min_torch=(2, 1),
        related_ops=("aten::avg_pool3d",),
        summary="pooling matrices per axis (the divisor factorises per axis)",
    ),
    Patch(
        name="fractional_max_pool2d_backward",
        # Mirrors aten/src/ATen/native/cuda/FractionalMaxPool2d.cu: fractional_max_pool2d_backward_cuda.
        kernels=(
            Kernel(
                "fractional_max_pool2d_backward",
                "aten::fractional_max_pool2d_backward(Tensor grad_output, Tensor self, int[2] kernel_size, "
                "int[2] output_size, Tensor indices) -> Tensor",
                fractional_max_pool2d_backward,
            ),
            Kernel(
                "fractional_max_pool2d_backward.grad_input",
                "aten::fractional_max_pool2d_backward.grad_input(Tensor grad_output, Tensor self, int[2] kernel_size, "
                "int[2] output_size, Tensor indices, *, Tensor(a!) grad_input) -> Tensor(a!)",
                with_out(fractional_max_pool2d_backward),
            ),
        ),
        impl=fractional_max_pool2d_backward,
        upstream="aten/src/ATen/native/cuda/FractionalMaxPool2d.cu: fractional_max_pool2d_backward_cuda",
        min_torch=(2, 1),
        related_ops=("aten::fractional_max_pool2d",),
        summary="sorted scatter sum at the argmax offsets",
    ),
    Patch(
        name="fractional_max_pool3d_backward",
        # Mirrors aten/src/ATen/native/cuda/FractionalMaxPool3d.cu: fractional_max_pool3d_backward_cuda.
        kernels=(
            Kernel(
                "fractional_max_pool3d_backward",
                "aten::fractional_max_pool3d_backward(Tensor grad_output, Tensor self, int[3] kernel_size, "
                "int[3] output_size, Tensor indices) -> Tensor",
                fractional_max_pool3d_backward,
            ),
            Kernel(
                "fractional_max_pool3d_backward.grad_input",
                "aten::fractional_max_pool3d_backward.grad_input(Tensor grad_output, Tensor self, int[3] kernel_size, "
                "int[3] output_size, Tensor indices, *, Tensor(a!) grad_input) -> Tensor(a!)",
                with_out(fractional_max_pool3d_backward),
            ),
        ),
        impl=fractional_max_pool3d_backward,
        upstream="aten/src/ATen/native/cuda/FractionalMaxPool3d.cu: fractional_max_pool3d_backward_cuda",
        min_torch=(2, 1),
        related_ops=("aten::fractional_max_pool3d",),
        summary="sorted scatter sum at the argmax offsets",
    ),
)
