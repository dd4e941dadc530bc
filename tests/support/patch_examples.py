"""Example invocations of every patched op: small ones for the tests, training-sized ones for the GPU benchmark.

Each example builds the aten call a patch replaces (an ``OpOverload`` and its arguments, inputs
made by torch itself, e.g. the argmax indices of a real forward pass) and, where the op is
differentiable, a float64 function for ``torch.autograd.gradcheck`` whose backward reaches the patch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

aten = torch.ops.aten
FLOATS = (torch.float32, torch.float64, torch.bfloat16)


@dataclass
class Call:
    """One aten call; ``run`` clones the argument the op mutates, so it can be repeated."""

    op: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    mutates_first: bool = False

    def run(self) -> Any:
        """Call the op (through the dispatcher, so an installed patch is used)."""
        args = self.args
        if self.mutates_first:
            args = (args[0].clone(), *args[1:])
        return self.op(*args, **self.kwargs)


@dataclass(frozen=True)
class Example:
    """A named invocation of the op(s) one patch replaces."""

    patch: str
    label: str
    build: Callable[[torch.device, torch.dtype, bool], Call]
    dtypes: tuple[torch.dtype, ...] = FLOATS
    gradcheck: Callable[[], tuple[Callable[..., Any], tuple[torch.Tensor, ...]]] | None = None
    exact: bool = False  # integer-valued results: compare with equality

    @property
    def id(self) -> str:
        """Return a test id such as "histc-bins100"."""
        return f"{self.patch}-{self.label}"


def _generator(seed: int = 0) -> torch.Generator:
    """Return a seeded CPU generator; inputs are drawn on the CPU and moved, so they match across devices."""
    return torch.Generator().manual_seed(seed)


def _randn(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Return seeded normal noise of ``shape``."""
    return torch.randn(shape, generator=_generator(seed), dtype=torch.float64).to(device=device, dtype=dtype)


def _randint(high: int, shape: tuple[int, ...], device: torch.device, seed: int = 0, low: int = 0) -> torch.Tensor:
    """Return seeded int64 values in [low, high)."""
    return torch.randint(low, high, shape, generator=_generator(seed)).to(device)


def _leaf(*shape: int, seed: int = 0) -> torch.Tensor:
    """Return a float64 CPU leaf for gradcheck."""
    return torch.randn(shape, generator=_generator(seed), dtype=torch.float64).requires_grad_()


# ----------------------------------------------------------------------------------------------- pooling


def _adaptive_avg2d(out_size: tuple[int, int], small: tuple[int, ...], large: tuple[int, ...], channels_last: bool = False):
    def build(device: torch.device, dtype: torch.dtype, big: bool) -> Call:
        x = _randn(large if big else small, dtype, device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        grad = torch.ones_like(aten._adaptive_avg_pool2d(x, out_size)) * _randn((*x.shape[:-2], *out_size), dtype, device, 1)
        return Call(aten._adaptive_avg_pool2d_backward.default, (grad, x))

    return build


def _adaptive_avg3d(out_size: tuple[int, int, int], small: tuple[int, ...], large: tuple[int, ...]):
    def build(device: torch.device, dtype: torch.dtype, big: bool) -> Call:
        x = _randn(large if big else small, dtype, device)
        grad = _randn((*x.shape[:-3], *out_size), dtype, device, 1)
        return Call(aten._adaptive_avg_pool3d_backward.default, (grad, x))

    return build


def _adaptive_max(spatial: int, out_size: tuple[int, ...], small: tuple[int, ...], large: tuple[int, ...]):
    forward = aten.adaptive_max_pool2d if spatial == 2 else aten.adaptive_max_pool3d
    backward = aten.adaptive_max_pool2d_backward if spatial == 2 else aten.adaptive_max_pool3d_backward

    def build(device: torch.device, dtype: torch.dtype, big: bool) -> Call:
        x = _randn(large if big else small, dtype, device)
        out, indices = forward(x, out_size)
        return Call(backward.default, (_randn(tuple(out.shape), dtype, device, 1), x, indices))

    return build


def _max_pool3d(kernel: int, stride: int, padding: int, ceil: bool, small: tuple[int, ...], large: tuple[int, ...]):
    def build(device: torch.device, dtype: torch.dtype, big: bool) -> Call:
        x = _randn(large if big else small, dtype, device)
        geometry = ([kernel] * 3, [stride] * 3, [padding] * 3, [1] * 3, ceil)
        out, indices = aten.max_pool3d_with_indices(x, *geometry)
        grad = _randn(tuple(out.shape), dtype, device, 1)
        return Call(aten.max_pool3d_with_indices_backward.default, (grad, x, *geometry, indices))

    return build


def _avg_pool3d(kernel: int, stride: int, padding: int, ceil: bool, include_pad: bool, divisor: int | None, small, large):
    def build(device: torch.device, dtype: torch.dtype, big: bool) -> Call:
        x = _randn(large if big else small, dtype, device)
        geometry = ([kernel] * 3, [stride] * 3, [padding] * 3, ceil, include_pad, divisor)
        out = aten.avg_pool3d(x.float(), *geometry)  # CPU has no bf16 avg_pool3d; only the shape is needed
        return Call(aten.avg_pool3d_backward.default, (_randn(tuple(out.shape), dtype, device, 1), x, *geometry))

    return build


def _fractional(spatial: int, out_size: tuple[int, ...], small: tuple[int, ...], large: tuple[int, ...]):
    forward = aten.fractional_max_pool2d if spatial == 2 else aten.fractional_max_pool3d
    backward = aten.fractional_max_pool2d_backward if spatial == 2 else aten.fractional_max_pool3d_backward

    def build(device: torch.device, dtype: torch.dtype, big: bool) -> Call:
        x = _randn(large if big else small, dtype, device)
        samples = torch.rand((x.shape[0], x.shape[1], spatial), generator=_generator(2), dtype=torch.float64)
        kernel = [2] * spatial
        out, indices = forward(x, kernel, list(out_size), samples.to(device=device, dtype=dtype))
        grad = _randn(tuple(out.shape), dtype, device, 1)
        return Call(backward.default, (grad, x, kernel, list(out_size), indices))

    return build


def _fractional_grad(spatial: int):
    def make() -> tuple[Callable[..., Any], tuple[torch.Tensor, ...]]:
        samples = torch.rand((1, 2, spatial), generator=_generator(3), dtype=torch.float64)
        if spatial == 2:
            return (lambda x: F.fractional_max_pool2d(x, 2, output_size=(4, 5), _random_samples=samples)), (_leaf(1, 2, 9, 11),)
        return (lambda x: F.fractional_max_pool3d(x, 2, output_size=(3, 4, 3), _random_samples=samples)), (_leaf(1, 2, 6, 7, 6),)

    return make


# ----------------------------------------------------------------------------------------------- upsample


def _upsample(op: Any, out_size: tuple[int, ...], small: tuple[int, ...], large: tuple[int, ...], align: bool, scales=()):
    def build(device: torch.device, dtype: torch.dtype, big: bool) -> Call:
        in_shape = large if big else small
        size = tuple(2 * s for s in in_shape[2:]) if big else out_size
        grad = _randn((*in_shape[:2], *size), dtype, device, 1)
        return Call(op.default, (grad, list(size), list(in_shape), align, *scales))

    return build


# ----------------------------------------------------------------------------------------------- grid sample


def _grid_sample(mode: int, padding: int, align: bool):
    def build(device: torch.device, dtype: torch.dtype, big: bool) -> Call:
        n, c, h, w, ho, wo = (16, 64, 64, 64, 64, 64) if big else (2, 3, 5, 7, 4, 6)
        x = _randn((n, c, h, w), dtype, device)
        # Grid points beyond [-1, 1] exercise the padding modes.
        grid = (torch.rand((n, ho, wo, 2), generator=_generator(4), dtype=torch.float64) * 2.4 - 1.2).to(device, dtype)
        grad = _randn((n, c, ho, wo), dtype, device, 1)
        return Call(aten.grid_sampler_2d_backward.default, (grad, x, grid, mode, padding, align, [True, True]))

    return build


def _grid_sample_grad(mode: str, padding: str, align: bool):
    def make() -> tuple[Callable[..., Any], tuple[torch.Tensor, ...]]:
        grid = (torch.rand((1, 3, 4, 2), generator=_generator(5), dtype=torch.float64) * 2.4 - 1.2).requires_grad_()
        fn = lambda x, g: F.grid_sample(x, g, mode=mode, padding_mode=padding, align_corners=align)  # noqa: E731
        return fn, (_leaf(1, 2, 4, 5), grid)

    return make


# ----------------------------------------------------------------------------------------------- losses


def _nll2d(reduction: int, weighted: bool, ignore_index: int):
    def build(device: torch.device, dtype: torch.dtype, big: bool) -> Call:
        n, c, h, w = (16, 21, 256, 256) if big else (2, 4, 5, 6)
        scores = torch.log_softmax(_randn((n, c, h, w), torch.float32, device), dim=1).to(dtype)
        target = _randint(c, (n, h, w), device, 1)
        target[..., 0] = ignore_index if ignore_index < 0 else target[..., 0]
        weight = (torch.rand(c, generator=_generator(6), dtype=torch.float64) + 0.5).to(device, dtype) if weighted else None
        return Call(aten.nll_loss2d_forward.default, (scores, target, weight, reduction, ignore_index))

    return build


def _nll2d_grad(reduction: str):
    def make() -> tuple[Callable[..., Any], tuple[torch.Tensor, ...]]:
        target = _randint(3, (2, 4, 5), torch.device("cpu"), 7)
        target[0, 0, 0] = -100
        weight = torch.rand(3, generator=_generator(8), dtype=torch.float64) + 0.5
        return (lambda x: F.nll_loss(x, target, weight=weight, reduction=reduction)), (_leaf(2, 3, 4, 5),)

    return make


def _ctc(concatenated: bool, zero_infinity: bool, tensor_lengths: bool = False):
    def build(device: torch.device, dtype: torch.dtype, big: bool) -> Call:
        steps, batch, classes, longest = (400, 32, 64, 100) if big else (12, 4, 6, 5)
        log_probs = torch.log_softmax(_randn((steps, batch, classes), torch.float64, device, 23), dim=2).to(dtype)
        input_lengths = [steps - (i % 3) * (steps // 6) for i in range(batch)]
        target_lengths = [(longest - (i * 7) % longest) if i % 5 else 0 for i in range(batch)]
        if not big:
            target_lengths = [3, 0, 2, 5]
            input_lengths = [12, 10, 3, 12]  # the third cannot align when targets repeat: infinite loss
        if concatenated:
            targets = _randint(classes, (sum(target_lengths),), device, 24, low=1)
        else:
            targets = _randint(classes, (batch, longest), device, 24, low=1)
        nll, log_alpha = aten._ctc_loss(log_probs, targets, input_lengths, target_lengths, 0, zero_infinity)
        grad = (torch.rand(batch, generator=_generator(25), dtype=torch.float64) + 0.5).to(device, dtype)
        if tensor_lengths:
            lengths = (torch.tensor(input_lengths, device=device), torch.tensor(target_lengths, device=device))
            return Call(aten._ctc_loss_backward.Tensor, (grad, log_probs, targets, *lengths, nll, log_alpha, 0, zero_infinity))
        return Call(aten._ctc_loss_backward.default, (grad, log_probs, targets, input_lengths, target_lengths, nll, log_alpha, 0, zero_infinity))

    return build


def _ctc_grad() -> tuple[Callable[..., Any], tuple[torch.Tensor, ...]]:
    targets = torch.tensor([[1, 2, 2], [3, 1, 0]])
    lengths = torch.tensor([7, 6]), torch.tensor([3, 2])
    fn = lambda x: F.ctc_loss(x.log_softmax(2), targets, *lengths, reduction="sum")  # noqa: E731
    return fn, (_leaf(7, 2, 4),)


# ----------------------------------------------------------------------------------------------- histogram


def _bincount(weighted: bool, weight_dtype: torch.dtype | None, minlength: int):
    def build(device: torch.device, dtype: torch.dtype, big: bool) -> Call:
        n, bins = (10_000_000, 1000) if big else (500, 37)
        values = _randint(bins, (n,), device, 9)
        weights = _randn((n,), weight_dtype or dtype, device, 10) if weighted else None
        return Call(aten.bincount.default, (values, weights, minlength))

    return build


def _histc(bins: int, low: float, high: float):
    def build(device: torch.device, dtype: torch.dtype, big: bool) -> Call:
        x = _randn((10_000_000,) if big else (2000,), dtype, device, 11)
        return Call(aten.histc.default, (x, bins, low, high))

    return build


# ----------------------------------------------------------------------------------------------- indexing


def _put(accumulate: bool):
    def build(device: torch.device, dtype: torch.dtype, big: bool) -> Call:
        numel, count = (1 << 20, 1 << 22) if big else (20, 60)
        target = _randn((numel // 4, 4), dtype, device)
        index = _randint(numel, (count,), device, 12, low=-numel)  # negatives wrap; many duplicates
        if not accumulate and not big:
            index = index[:10]
        source = _randn((index.numel(),), dtype, device, 13)
        return Call(aten.put_.default, (target, index, source, accumulate), mutates_first=True)

    return build


def _put_grad() -> tuple[Callable[..., Any], tuple[torch.Tensor, ...]]:
    index = torch.tensor([0, 3, 3, -1, 7, 0, 11])
    return (lambda x, s: x.put(index, s, accumulate=True)), (_leaf(3, 4), _leaf(7, seed=1))


def _scatter_reduce(reduce: str, include_self: bool, dim: int):
    def build(device: torch.device, dtype: torch.dtype, big: bool) -> Call:
        rows, cols, updates = (10_000, 64, 100_000) if big else (6, 5, 9)
        target = _randn((rows, cols), dtype, device)
        if dim == 0:
            index = _randint(rows, (updates, cols), device, 14)
            src = (torch.rand((updates, cols), generator=_generator(15), dtype=torch.float64) + 0.5).to(device, dtype)
        else:
            index = _randint(cols, (rows, updates), device, 14)
            src = (torch.rand((rows, updates), generator=_generator(15), dtype=torch.float64) + 0.5).to(device, dtype)
        return Call(aten.scatter_reduce.two, (target, dim, index, src, reduce), {"include_self": include_self})

    return build


def _scatter_reduce_grad(reduce: str):
    def make() -> tuple[Callable[..., Any], tuple[torch.Tensor, ...]]:
        index = _randint(4, (7, 3), torch.device("cpu"), 16)
        src = (torch.rand((7, 3), generator=_generator(17), dtype=torch.float64) + 0.5).requires_grad_()
        target = (torch.rand((4, 3), generator=_generator(18), dtype=torch.float64) + 0.5).requires_grad_()
        return (lambda t, s: t.scatter_reduce(0, index, s, reduce, include_self=True)), (target, src)

    return make


# ----------------------------------------------------------------------------------------------- reductions


def _median(op: Any, dim: int, keepdim: bool, with_nan: bool):
    def build(device: torch.device, dtype: torch.dtype, big: bool) -> Call:
        # Few distinct values: many ties, so the index choice matters.
        x = _randint(5, (4096, 1024) if big else (6, 9), device, 19).to(dtype)
        if with_nan and dtype.is_floating_point:
            x[1, 2] = float("nan")
            x[2] = float("nan")
        return Call(op, (x, dim, keepdim))

    return build


# ----------------------------------------------------------------------------------------------- padding


def _pad(kind: str, spatial: int, padding: tuple[int, ...]):
    forward = getattr(aten, f"{kind}_pad{spatial}d")
    backward = getattr(aten, f"{kind}_pad{spatial}d_backward")

    def build(device: torch.device, dtype: torch.dtype, big: bool) -> Call:
        shape = {1: (32, 256, 4096), 2: (16, 64, 128, 128), 3: (4, 32, 32, 64, 64)}[spatial] if big else (2, 3, 5, 6, 7)[: 2 + spatial]
        x = _randn(shape, dtype, device)
        out = forward(x, list(padding))
        return Call(backward.default, (_randn(tuple(out.shape), dtype, device, 1), x, list(padding)))

    return build


# ----------------------------------------------------------------------------------------------- embedding bag


def _embedding_bag(mode: int, padding_idx: int, per_sample: bool, freq: bool = False):
    def build(device: torch.device, dtype: torch.dtype, big: bool) -> Call:
        rows, dim, bags, per_bag = (100_000, 128, 4096, 20) if big else (10, 4, 5, 3)
        weight = _randn((rows, dim), dtype, device)
        indices = _randint(rows // 10 if big else rows, (bags * per_bag,), device, 20)  # hot rows: duplicates
        offsets = torch.arange(0, bags * per_bag, per_bag, device=device)
        if not big:
            offsets = torch.tensor([0, 2, 2, 9, 12], device=device)  # one empty bag
        samples = _randn((indices.numel(),), dtype, device, 21) if per_sample else None
        out, offset2bag, bag_size, max_indices = aten._embedding_bag(
            weight, indices, offsets, freq, mode, False, samples, False, padding_idx
        )
        if offset2bag.numel() == 0:
            # CPU's sum fast path leaves offset2bag empty; aten's composite backward rebuilds it like this.
            offset2bag = torch.repeat_interleave(
                torch.arange(offsets.numel(), device=device), torch.diff(offsets, append=torch.tensor([indices.numel()], device=device))
            )
            bag_size = torch.zeros_like(bag_size)
        grad = _randn(tuple(out.shape), dtype, device, 22)
        return Call(
            aten._embedding_bag_dense_backward.default,
            (grad, indices, offset2bag, bag_size, max_indices, rows, freq, mode, samples, padding_idx),
        )

    return build


def _embedding_bag_grad(mode: str):
    def make() -> tuple[Callable[..., Any], tuple[torch.Tensor, ...]]:
        indices = torch.tensor([1, 2, 4, 5, 4, 3, 2, 9, 0, 4, 4])
        offsets = torch.tensor([0, 3, 3, 8])
        return (lambda w: F.embedding_bag(indices, w, offsets, mode=mode, padding_idx=4)), (_leaf(10, 3),)

    return make


EXAMPLES: tuple[Example, ...] = (
    Example("adaptive_avg_pool2d_backward", "13x17-to-5x7", _adaptive_avg2d((5, 7), (2, 3, 13, 17), (64, 512, 14, 14)),
            gradcheck=lambda: ((lambda x: F.adaptive_avg_pool2d(x, (3, 4))), (_leaf(1, 2, 7, 9),))),
    Example("adaptive_avg_pool2d_backward", "to-1x1", _adaptive_avg2d((1, 1), (2, 3, 7, 7), (128, 2048, 7, 7))),
    Example("adaptive_avg_pool2d_backward", "12x10-to-16x16", _adaptive_avg2d((16, 16), (3, 12, 10), (32, 256, 24, 24)),
            gradcheck=lambda: ((lambda x: F.adaptive_avg_pool2d(x, (9, 11))), (_leaf(2, 5, 7),))),
    Example("adaptive_avg_pool2d_backward", "channels-last", _adaptive_avg2d((3, 4), (2, 3, 9, 11), (64, 512, 28, 28), True)),
    Example("adaptive_avg_pool3d_backward", "7x9x5-to-3x4x2", _adaptive_avg3d((3, 4, 2), (2, 3, 7, 9, 5), (8, 256, 8, 14, 14)),
            gradcheck=lambda: ((lambda x: F.adaptive_avg_pool3d(x, (2, 3, 2))), (_leaf(1, 2, 5, 7, 3),))),
    Example("adaptive_max_pool2d_backward", "11x13-to-4x5", _adaptive_max(2, (4, 5), (2, 3, 11, 13), (64, 256, 28, 28)),
            gradcheck=lambda: ((lambda x: F.adaptive_max_pool2d(x, (3, 4))), (_leaf(1, 2, 7, 9),))),
    Example("adaptive_max_pool3d_backward", "7x9x5-to-3x4x2", _adaptive_max(3, (3, 4, 2), (2, 3, 7, 9, 5), (8, 64, 16, 28, 28)),
            gradcheck=lambda: ((lambda x: F.adaptive_max_pool3d(x, (2, 3, 2))), (_leaf(1, 2, 5, 7, 3),))),
    Example("max_pool3d_backward", "k3s2p1-ceil", _max_pool3d(3, 2, 1, True, (2, 3, 7, 9, 8), (8, 64, 16, 56, 56)),
            gradcheck=lambda: ((lambda x: F.max_pool3d(x, 3, 2, 1, ceil_mode=True)), (_leaf(1, 2, 5, 6, 7),))),
    Example("avg_pool3d_backward", "k3s2p1-include-pad", _avg_pool3d(3, 2, 1, False, True, None, (2, 3, 7, 9, 8), (8, 64, 16, 56, 56)),
            gradcheck=lambda: ((lambda x: F.avg_pool3d(x, 3, 2, 1)), (_leaf(1, 2, 5, 6, 7),))),
    Example("avg_pool3d_backward", "k2s1p1-ceil-exclude-pad", _avg_pool3d(2, 1, 1, True, False, None, (2, 3, 5, 6, 7), (8, 32, 16, 32, 32)),
            gradcheck=lambda: ((lambda x: F.avg_pool3d(x, 2, 1, 1, ceil_mode=True, count_include_pad=False)), (_leaf(1, 2, 4, 5, 6),))),
    Example("avg_pool3d_backward", "k3s3-divisor", _avg_pool3d(3, 3, 0, True, True, 5, (2, 3, 7, 8, 10), (8, 64, 15, 48, 48)),
            gradcheck=lambda: ((lambda x: F.avg_pool3d(x, 3, 3, ceil_mode=True, divisor_override=5)), (_leaf(1, 2, 5, 7, 8),))),
    Example("fractional_max_pool2d_backward", "9x11-to-4x5", _fractional(2, (4, 5), (2, 3, 9, 11), (32, 64, 64, 64)),
            gradcheck=_fractional_grad(2)),
    Example("fractional_max_pool3d_backward", "6x7x6-to-3x4x3", _fractional(3, (3, 4, 3), (2, 3, 6, 7, 6), (8, 32, 16, 32, 32)),
            gradcheck=_fractional_grad(3)),
    Example("upsample_bilinear2d_backward", "5x7-to-11x13", _upsample(aten.upsample_bilinear2d_backward, (11, 13), (2, 3, 5, 7), (16, 256, 64, 64), False),
            gradcheck=lambda: ((lambda x: F.interpolate(x, size=(7, 9), mode="bilinear")), (_leaf(1, 2, 4, 5),))),
    Example("upsample_bilinear2d_backward", "align-corners-down", _upsample(aten.upsample_bilinear2d_backward, (4, 3), (2, 3, 9, 8), (16, 256, 64, 64), True),
            gradcheck=lambda: ((lambda x: F.interpolate(x, size=(3, 4), mode="bilinear", align_corners=True)), (_leaf(1, 2, 7, 9),))),
    Example("upsample_bilinear2d_backward", "scale-factor", _upsample(aten.upsample_bilinear2d_backward, (13, 16), (2, 3, 5, 7), (16, 256, 64, 64), False, (2.7, 2.3)),
            gradcheck=lambda: ((lambda x: F.interpolate(x, scale_factor=(2.7, 2.3), mode="bilinear")), (_leaf(1, 2, 4, 5),))),
    Example("upsample_bicubic2d_backward", "5x7-to-11x13", _upsample(aten.upsample_bicubic2d_backward, (11, 13), (2, 3, 5, 7), (16, 64, 64, 64), False),
            gradcheck=lambda: ((lambda x: F.interpolate(x, size=(7, 9), mode="bicubic")), (_leaf(1, 2, 4, 5),))),
    Example("upsample_bicubic2d_backward", "align-corners", _upsample(aten.upsample_bicubic2d_backward, (11, 13), (2, 3, 5, 7), (16, 64, 64, 64), True),
            gradcheck=lambda: ((lambda x: F.interpolate(x, size=(3, 8), mode="bicubic", align_corners=True)), (_leaf(1, 2, 4, 5),))),
    Example("upsample_linear1d_backward", "7-to-17", _upsample(aten.upsample_linear1d_backward, (17,), (2, 3, 7), (32, 256, 1024), False),
            gradcheck=lambda: ((lambda x: F.interpolate(x, size=11, mode="linear")), (_leaf(1, 2, 5),))),
    Example("upsample_trilinear3d_backward", "3x5x7-to-5x11x13", _upsample(aten.upsample_trilinear3d_backward, (5, 11, 13), (2, 3, 3, 5, 7), (4, 64, 16, 32, 32), False),
            gradcheck=lambda: ((lambda x: F.interpolate(x, size=(4, 5, 6), mode="trilinear")), (_leaf(1, 2, 2, 3, 4),))),
    *(
        Example("grid_sampler_2d_backward", f"{mode_name}-{pad_name}-{'align' if align else 'noalign'}", _grid_sample(mode, pad, align),
                gradcheck=_grid_sample_grad(mode_name, pad_name, align) if mode_name != "nearest" else None)
        for mode, mode_name in ((0, "bilinear"), (1, "nearest"), (2, "bicubic"))
        for pad, pad_name in ((0, "zeros"), (1, "border"), (2, "reflection"))
        for align in (False, True)
    ),
    Example("nll_loss2d_forward", "mean-weighted", _nll2d(1, True, -100), gradcheck=_nll2d_grad("mean")),
    Example("nll_loss2d_forward", "sum", _nll2d(2, False, -100), gradcheck=_nll2d_grad("sum")),
    Example("nll_loss2d_forward", "none-ignore-class-1", _nll2d(0, True, 1), gradcheck=_nll2d_grad("none")),
    Example("ctc_loss_backward", "padded-targets", _ctc(False, False), dtypes=(torch.float32, torch.float64), gradcheck=_ctc_grad),
    Example("ctc_loss_backward", "concatenated-zero-infinity", _ctc(True, True), dtypes=(torch.float32, torch.float64)),
    Example("ctc_loss_backward", "tensor-lengths", _ctc(False, False, True), dtypes=(torch.float32, torch.float64)),
    Example("bincount", "float-weights", _bincount(True, torch.float32, 0), dtypes=(torch.int64,)),
    Example("bincount", "double-weights-minlength", _bincount(True, torch.float64, 64), dtypes=(torch.int64,)),
    Example("bincount", "counts", _bincount(False, None, 0), dtypes=(torch.int64,), exact=True),
    Example("histc", "bins100-data-range", _histc(100, 0, 0), exact=True),
    Example("histc", "bins7-fixed-range", _histc(7, -1.0, 1.5), exact=True),
    Example("put_accumulate", "accumulate-duplicates", _put(True), gradcheck=_put_grad),
    Example("put_accumulate", "overwrite-duplicates", _put(False), exact=True),
    *(
        Example("scatter_reduce", f"{reduce}-{'self' if include else 'noself'}-dim{dim}", _scatter_reduce(reduce, include, dim),
                gradcheck=_scatter_reduce_grad(reduce) if include and dim == 0 else None)
        for reduce in ("prod", "sum", "mean", "amax", "amin")
        for include in (True, False)
        for dim in (0, 1)
    ),
    Example("median_dim", "dim1-ties-nan", _median(aten.median.dim, 1, False, True), dtypes=(*FLOATS, torch.int64),
            gradcheck=lambda: ((lambda x: torch.median(x, 1).values), (_leaf(4, 7),))),
    Example("median_dim", "dim0-keepdim", _median(aten.median.dim, 0, True, False), dtypes=(*FLOATS, torch.int64)),
    Example("nanmedian_dim", "dim1-ties-nan", _median(aten.nanmedian.dim, 1, False, True),
            gradcheck=lambda: ((lambda x: torch.nanmedian(x, 0).values), (_leaf(4, 7),))),
    Example("reflection_pad_backward", "1d", _pad("reflection", 1, (3, 2)), gradcheck=lambda: ((lambda x: F.pad(x, (3, 2), mode="reflect")), (_leaf(1, 2, 5),))),
    Example("reflection_pad_backward", "2d", _pad("reflection", 2, (2, 3, 4, 1)), gradcheck=lambda: ((lambda x: F.pad(x, (2, 3, 4, 1), mode="reflect")), (_leaf(1, 2, 5, 6),))),
    Example("reflection_pad_backward", "3d-negative", _pad("reflection", 3, (1, -1, 2, 2, 0, 3)),
            gradcheck=lambda: ((lambda x: F.pad(x, (1, -1, 2, 2, 0, 3), mode="reflect")), (_leaf(1, 2, 4, 5, 6),))),
    Example("replication_pad_backward", "1d", _pad("replication", 1, (4, 6)), gradcheck=lambda: ((lambda x: F.pad(x, (4, 6), mode="replicate")), (_leaf(1, 2, 5),))),
    Example("replication_pad_backward", "2d", _pad("replication", 2, (3, 0, -1, 5)), gradcheck=lambda: ((lambda x: F.pad(x, (3, 0, -1, 5), mode="replicate")), (_leaf(1, 2, 5, 6),))),
    Example("replication_pad_backward", "3d", _pad("replication", 3, (2, 2, 2, 2, 2, 2)), gradcheck=lambda: ((lambda x: F.pad(x, (2, 2, 2, 2, 2, 2), mode="replicate")), (_leaf(1, 1, 3, 4, 5),))),
    Example("embedding_bag_backward", "max-padding", _embedding_bag(2, 4, False), gradcheck=_embedding_bag_grad("max")),
    Example("embedding_bag_backward", "mean", _embedding_bag(1, -1, False), gradcheck=_embedding_bag_grad("mean")),
    Example("embedding_bag_backward", "sum-per-sample-weights", _embedding_bag(0, -1, True), gradcheck=_embedding_bag_grad("sum")),
)


def examples_for(patch: str) -> list[Example]:
    """Return the examples of one patch."""
    return [example for example in EXAMPLES if example.patch == patch]
