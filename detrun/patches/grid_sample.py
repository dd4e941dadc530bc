"""Deterministic grid_sampler_2d backward: per-tap sorted scatter sums for grad_input, gathers for grad_grid.

torch's CUDA kernel adds every output pixel's contribution into grad_input with atomicAdd
(aten/src/ATen/native/cuda/GridSampler.cu: grid_sampler_2d_backward_kernel); it raises in
deterministic mode. The coordinate arithmetic below mirrors GridSampler.cuh line for line, in
float32 for half inputs (aten's opmath_t) and float64 for double.
"""
from __future__ import annotations

from typing import Sequence

import torch

from detrun.patches._common import compute_dtype, with_out
from detrun.patches._core import Kernel, Patch

BILINEAR, NEAREST, BICUBIC = 0, 1, 2
ZEROS, BORDER, REFLECTION = 0, 1, 2
CUBIC_A = -0.75  # aten's cubic convolution constant
# Taps scattered per index_put_ call: fewer sorts and launches, at the cost of a few grad_output-sized buffers.
TAPS_PER_SCATTER = 4


def _unnormalize(coord: torch.Tensor, size: int, align_corners: bool) -> tuple[torch.Tensor, float]:
    """Map [-1, 1] to pixel indices; return the indices and d(index)/d(coord)."""
    if align_corners:
        return ((coord + 1) / 2) * (size - 1), (size - 1) / 2
    return ((coord + 1) * size - 1) / 2, size / 2


def _clip(coord: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip to [0, size - 1]; the gradient is 0 on and beyond the borders, as aten treats them."""
    limit = size - 1
    inside = (coord > 0) & (coord < limit)
    return coord.clamp(0, limit), inside.to(coord.dtype)


def _reflect(coord: torch.Tensor, twice_low: int, twice_high: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reflect into [low, high]; return the coordinate and the sign of its derivative."""
    if twice_low == twice_high:
        return torch.zeros_like(coord), torch.zeros_like(coord)
    low = twice_low / 2
    span = (twice_high - twice_low) / 2
    shifted = coord - low
    sign = torch.where(shifted < 0, -1.0, 1.0).to(coord.dtype)
    shifted = shifted.abs()
    extra = torch.fmod(shifted, span)
    flips = torch.floor(shifted / span).to(torch.int64)
    even = flips % 2 == 0
    return torch.where(even, extra + low, span - extra + low), torch.where(even, sign, -sign)


def _apply_padding(coord: torch.Tensor, size: int, padding_mode: int, align_corners: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply border or reflection padding to pixel coordinates; return them and their derivative factor."""
    if padding_mode == BORDER:
        return _clip(coord, size)
    if padding_mode == REFLECTION:
        if align_corners:
            reflected, reflect_grad = _reflect(coord, 0, 2 * (size - 1))
        else:
            reflected, reflect_grad = _reflect(coord, -1, 2 * size - 1)
        clipped, clip_grad = _clip(reflected, size)
        return clipped, reflect_grad * clip_grad
    return coord, torch.ones_like(coord)


def _source_index(coord: torch.Tensor, size: int, padding_mode: int, align_corners: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return aten's grid_sampler_compute_source_index and its derivative with respect to the grid value."""
    pixels, scale = _unnormalize(coord, size, align_corners)
    padded, padding_grad = _apply_padding(pixels, size, padding_mode, align_corners)
    return padded, padding_grad * scale


def _cubic_coefficients(t: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Return the four cubic-convolution weights at offset ``t`` and their derivatives d/dt."""

    def near(x: torch.Tensor) -> torch.Tensor:  # |x| <= 1
        return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1

    def far(x: torch.Tensor) -> torch.Tensor:  # 1 < |x| < 2
        return ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A

    def near_slope(x: torch.Tensor) -> torch.Tensor:
        return (3 * (CUBIC_A + 2) * x - 2 * (CUBIC_A + 3)) * x

    def far_slope(x: torch.Tensor) -> torch.Tensor:
        return (3 * CUBIC_A * x - 10 * CUBIC_A) * x + 8 * CUBIC_A

    weights = [far(t + 1), near(t), near(1 - t), far(2 - t)]
    # d/dt of w(t+1), w(t), w(1-t), w(2-t): the chain rule flips the sign of the last two.
    slopes = [far_slope(t + 1), near_slope(t), -near_slope(1 - t), -far_slope(2 - t)]
    return weights, slopes


class _Taps:
    """Accumulate grad_input by sorted scatter sums and grad_grid by gathers, one interpolation tap at a time."""

    def __init__(self, grad_output: torch.Tensor, input: torch.Tensor, acc: torch.dtype, need_input_grad: bool) -> None:
        """Lay grad_output and input out as (N * pixels, C) rows so each tap moves whole channel vectors."""
        self.batch, self.channels, self.height, self.width = input.shape
        self.acc = acc
        # (N, Ho, Wo, C) rows: a tap reads or writes one row of C values per output pixel.
        self.grad_rows = grad_output.to(acc).permute(0, 2, 3, 1).reshape(-1, self.channels)
        self.input_rows = input.to(acc).permute(0, 2, 3, 1).reshape(-1, self.channels)
        out_pixels = grad_output.shape[2] * grad_output.shape[3]
        # First grad_input row of each output pixel's image (arange // size avoids a host sync).
        self.row_base = (
            torch.arange(self.batch * out_pixels, device=input.device, dtype=torch.int64) // max(out_pixels, 1)
        ) * (self.height * self.width)
        self.grad_input_rows = (
            torch.zeros(self.batch * self.height * self.width, self.channels, dtype=acc, device=input.device)
            if need_input_grad
            else None
        )
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor,
        weight_dx: torch.Tensor | None = None,
        weight_dy: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Scatter ``weight * grad`` to input pixel (y, x); return this tap's (d/dix, d/diy) sums over channels."""
        x = x.reshape(-1)
        y = y.reshape(-1)
        inside = (x >= 0) & (x < self.width) & (y >= 0) & (y < self.height)
        rows = self.row_base + (y.clamp(0, self.height - 1) * self.width + x.clamp(0, self.width - 1))
        weight = torch.where(inside, weight.reshape(-1), torch.zeros((), dtype=self.acc, device=weight.device))
        if self.grad_input_rows is not None:
            self._pending.append((rows, self.grad_rows * weight[:, None]))
            if len(self._pending) == TAPS_PER_SCATTER:
                self._flush()
        if weight_dx is None or weight_dy is None:
            return None
        # The tap's input value dotted with grad_output over channels; a zero for taps outside the image.
        dot = (self.input_rows[rows] * self.grad_rows).sum(dim=1) * inside.to(self.acc)
        return dot * weight_dx.reshape(-1), dot * weight_dy.reshape(-1)

    def _flush(self) -> None:
        """Add the pending taps to grad_input with one sorted scatter sum (index_put_ accumulate)."""
        if self._pending and self.grad_input_rows is not None:
            rows = torch.cat([r for r, _ in self._pending])
            values = torch.cat([v for _, v in self._pending])
            # Duplicates are summed run by run after a stable sort, and batches of taps come in a fixed
            # order, so the order of every floating-point addition is the same on each run.
            self.grad_input_rows.index_put_((rows,), values, accumulate=True)
        self._pending = []

    def grad_input(self, like: torch.Tensor) -> torch.Tensor | None:
        """Return grad_input in NCHW, dtype of ``like``."""
        self._flush()
        if self.grad_input_rows is None:
            return None
        rows = self.grad_input_rows.view(self.batch, self.height, self.width, self.channels)
        return rows.permute(0, 3, 1, 2).to(like.dtype).contiguous()


def grid_sampler_2d_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    grid: torch.Tensor,
    interpolation_mode: int,
    padding_mode: int,
    align_corners: bool,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Return (grad_input, grad_grid) of grid_sampler_2d without atomics."""
    acc = compute_dtype(input.dtype)
    height, width = input.shape[2], input.shape[3]
    need_input_grad = bool(output_mask[0])
    taps = _Taps(grad_output, input, acc, need_input_grad)
    gx = grid[..., 0].to(acc)
    gy = grid[..., 1].to(acc)
    if interpolation_mode == NEAREST:
        ix, _ = _source_index(gx, width, padding_mode, align_corners)
        iy, _ = _source_index(gy, height, padding_mode, align_corners)
        # torch.round is round-half-to-even, like nearbyint in aten.
        taps.add(torch.round(ix).to(torch.int64), torch.round(iy).to(torch.int64), torch.ones_like(ix))
        return taps.grad_input(input), torch.zeros_like(grid)
    if interpolation_mode == BILINEAR:
        ix, gx_mult = _source_index(gx, width, padding_mode, align_corners)
        iy, gy_mult = _source_index(gy, height, padding_mode, align_corners)
        x0 = torch.floor(ix)
        y0 = torch.floor(iy)
        east, south = ix - x0, iy - y0  # distances from the north-west corner
        west, north = 1 - east, 1 - south
        x0i, y0i = x0.to(torch.int64), y0.to(torch.int64)
        corners = (
            (x0i, y0i, west * north, -north, -west),
            (x0i + 1, y0i, east * north, north, -east),
            (x0i, y0i + 1, west * south, -south, west),
            (x0i + 1, y0i + 1, east * south, south, east),
        )
    elif interpolation_mode == BICUBIC:
        ix, gx_mult = _unnormalize(gx, width, align_corners)
        iy, gy_mult = _unnormalize(gy, height, align_corners)
        x0 = torch.floor(ix)
        y0 = torch.floor(iy)
        x_weights, x_slopes = _cubic_coefficients(ix - x0)
        y_weights, y_slopes = _cubic_coefficients(iy - y0)
        corners_list = []
        for j in range(4):
            # Padding applies to each tap's coordinate (aten's get_value_bounded / add_value_bounded).
            tap_y = _apply_padding(y0 - 1 + j, height, padding_mode, align_corners)[0].to(torch.int64)
            for i in range(4):
                tap_x = _apply_padding(x0 - 1 + i, width, padding_mode, align_corners)[0].to(torch.int64)
                corners_list.append(
                    (tap_x, tap_y, x_weights[i] * y_weights[j], x_slopes[i] * y_weights[j], x_weights[i] * y_slopes[j])
                )
        corners = tuple(corners_list)
    else:
        raise RuntimeError(f"grid_sampler_2d_backward: unknown interpolation mode {interpolation_mode}")
    grad_ix = torch.zeros(gx.numel(), dtype=acc, device=grid.device)
    grad_iy = torch.zeros_like(grad_ix)
    for x, y, weight, weight_dx, weight_dy in corners:
        sums = taps.add(x, y, weight, weight_dx, weight_dy)
        assert sums is not None
        grad_ix = grad_ix + sums[0]
        grad_iy = grad_iy + sums[1]
    grad_grid = torch.stack((grad_ix.view_as(gx) * gx_mult, grad_iy.view_as(gy) * gy_mult), dim=-1)
    return taps.grad_input(input), grad_grid.to(grid.dtype)


def _grid_sampler_2d_backward_kernel(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    grid: torch.Tensor,
    interpolation_mode: int,
    padding_mode: int,
    align_corners: bool,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatcher entry: an undefined grad_input is returned as an empty tensor, as the Python boundary needs a Tensor."""
    grad_input, grad_grid = grid_sampler_2d_backward(
        grad_output, input, grid, interpolation_mode, padding_mode, align_corners, output_mask
    )
    if grad_input is None:
        grad_input = torch.zeros_like(input, memory_format=torch.contiguous_format)
    return grad_input, grad_grid


def cudnn_grid_sampler_backward(
    self: torch.Tensor, grid: torch.Tensor, grad_output: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (grad_self, grad_grid) of cuDNN's sampler: bilinear, zero padding, align_corners=True."""
    return _grid_sampler_2d_backward_kernel(grad_output, self, grid, BILINEAR, ZEROS, True, (True, True))


_GRID_ARGS = (
    "Tensor grad_output, Tensor input, Tensor grid, int interpolation_mode, int padding_mode, bool align_corners, "
    "bool[2] output_mask"
)

PATCHES: tuple[Patch, ...] = (
    Patch(
        name="grid_sampler_2d_backward",
        # Mirrors aten/src/ATen/native/cuda/GridSampler.cu: grid_sampler_2d_backward_cuda and GridSampler.cuh
        # (native_functions.yaml: grid_sampler_2d_backward, dispatch CUDA). F.grid_sample with bilinear, zeros and
        # align_corners=True goes to cuDNN instead (cudnn_grid_sampler_backward), which is covered with the same math.
        kernels=(
            Kernel(
                "grid_sampler_2d_backward",
                f"aten::grid_sampler_2d_backward({_GRID_ARGS}) -> (Tensor, Tensor)",
                _grid_sampler_2d_backward_kernel,
            ),
            Kernel(
                "grid_sampler_2d_backward.out",
                f"aten::grid_sampler_2d_backward.out({_GRID_ARGS}, *, Tensor(a!) out0, Tensor(b!) out1) "
                "-> (Tensor(a!), Tensor(b!))",
                with_out(_grid_sampler_2d_backward_kernel, n_out=2),
            ),
            Kernel(
                "cudnn_grid_sampler_backward",
                "aten::cudnn_grid_sampler_backward(Tensor self, Tensor grid, Tensor grad_output) "
                "-> (Tensor grad_self, Tensor grad_grid)",
                cudnn_grid_sampler_backward,
            ),
        ),
        impl=grid_sampler_2d_backward,
        upstream="aten/src/ATen/native/cuda/GridSampler.cu: grid_sampler_2d_backward_cuda",
        min_torch=(2, 1),
        related_ops=("aten::grid_sampler_2d", "aten::grid_sampler", "aten::cudnn_grid_sampler"),
        summary="per-tap index_put_ accumulate of channel rows; grad_grid from gathers and a channel dot product",
    ),
)
