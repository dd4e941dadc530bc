"""Per-patch correctness on CPU: each patch, registered for the CPU key, matches torch's own kernel and passes gradcheck.

The patches target CUDA, but their kernels are plain torch code, so registering them for "CPU" runs
exactly the code a GPU would run, through the same dispatcher path (F.*, nn modules, autograd).
"""
from __future__ import annotations

from typing import Any

import pytest
import torch

import detrun.patches as patches
from support.patch_examples import EXAMPLES, Call, Example

CPU = torch.device("cpu")
LOW_PRECISION = (torch.float16, torch.bfloat16)
INDEX_OUTPUT_PATCHES = {"median_dim", "nanmedian_dim"}  # ties: any index of an equal element is correct

CASES = [pytest.param(example, dtype, id=f"{example.id}-{str(dtype).removeprefix('torch.')}") for example in EXAMPLES for dtype in example.dtypes]
GRAD_CASES = [pytest.param(example, id=example.id) for example in EXAMPLES if example.gradcheck is not None]


@pytest.fixture(autouse=True)
def _no_patches_left_behind():
    """Guarantee each test starts and ends with torch's own kernels."""
    patches.uninstall()
    yield
    patches.uninstall()


def _as_tuple(value: Any) -> tuple[Any, ...]:
    """Return ``value`` as a tuple of outputs."""
    return value if isinstance(value, tuple) else (value,)


def _upcast(call: Call, dtype: torch.dtype) -> Call:
    """Return the same call with every floating tensor argument converted (exactly) to ``dtype``."""

    def convert(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(dtype)
        return value

    return Call(call.op, tuple(convert(a) for a in call.args), call.kwargs, call.mutates_first)


def _reference(example: Example, call: Call, dtype: torch.dtype) -> tuple[Any, ...]:
    """Return torch's result; for half types, torch's kernel on the same values in float32 (CUDA's acc_type)."""
    if dtype in LOW_PRECISION:
        return tuple(r.to(dtype) if r.is_floating_point() else r for r in _as_tuple(_upcast(call, torch.float32).run()))
    return _as_tuple(call.run())


def _assert_matches(example: Example, call: Call, expected: tuple[Any, ...], actual: tuple[Any, ...], dtype: torch.dtype) -> None:
    """Assert the patched outputs equal torch's (exactly for integer results, within float tolerance otherwise)."""
    assert len(expected) == len(actual)
    for position, (want, got) in enumerate(zip(expected, actual)):
        assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
        if example.patch in INDEX_OUTPUT_PATCHES and position == 1:
            values, source = actual[0], call.args[0]
            dim, keepdim = call.args[1], call.args[2]
            picked = source.gather(dim, got if keepdim else got.unsqueeze(dim))
            torch.testing.assert_close(picked if keepdim else picked.squeeze(dim), values, equal_nan=True, rtol=0, atol=0)
            continue
        if example.exact or not want.is_floating_point():
            assert torch.equal(got, want), f"output {position} differs"
            continue
        if dtype in LOW_PRECISION:
            scale = float(torch.nan_to_num(want.float()).abs().max()) if want.numel() else 1.0
            torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2 * max(scale, 1.0), equal_nan=True)
        else:
            torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize(("example", "dtype"), CASES)
def test_patch_matches_torch_through_the_dispatcher(example: Example, dtype: torch.dtype) -> None:
    """The patched op, reached through the dispatcher, gives torch's answer and really runs the patch."""
    call = example.build(CPU, dtype, False)
    expected = _reference(example, call, dtype)
    patch = patches.REGISTRY[example.patch]
    before = patch.calls
    assert patches.install([example.patch], dispatch_key="CPU") == [example.patch]
    actual = _as_tuple(call.run())
    assert patch.calls == before + 1
    _assert_matches(example, call, expected, actual, dtype)


@pytest.mark.parametrize(("example", "dtype"), CASES)
def test_patch_impl_called_directly_is_repeatable(example: Example, dtype: torch.dtype) -> None:
    """Calling ``impl`` directly twice gives bitwise-identical results (the property a GPU run needs)."""
    call = example.build(CPU, dtype, False)
    impl = patches.REGISTRY[example.patch].impl
    args = lambda: (call.args[0].clone(), *call.args[1:]) if call.mutates_first else call.args  # noqa: E731
    first = _as_tuple(impl(*args(), **call.kwargs))
    second = _as_tuple(impl(*args(), **call.kwargs))
    for a, b in zip(first, second):
        if a is None:
            assert b is None
            continue
        assert torch.equal(torch.nan_to_num(a) if a.is_floating_point() else a, torch.nan_to_num(b) if b.is_floating_point() else b)


@pytest.mark.parametrize("example", GRAD_CASES)
def test_gradcheck_through_patched_kernel(example: Example) -> None:
    """Autograd through the patched CPU kernel agrees with finite differences in float64."""
    assert example.gradcheck is not None
    fn, inputs = example.gradcheck()
    patch = patches.REGISTRY[example.patch]
    patches.install([example.patch], dispatch_key="CPU")
    before = patch.calls
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
    assert patch.calls > before, "gradcheck never reached the patch"


def test_every_patch_has_examples_and_every_differentiable_family_a_gradcheck() -> None:
    """Each registered patch is exercised; only the integer-valued ops lack a gradcheck."""
    covered = {example.patch for example in EXAMPLES}
    assert covered == set(patches.names())
    with_grad = {example.patch for example in EXAMPLES if example.gradcheck is not None}
    assert set(patches.names()) - with_grad == {"bincount", "histc"}


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (lambda: torch.bincount(torch.tensor([-1, 2])), "non-negative"),
        (lambda: torch.bincount(torch.tensor([[1, 2]])), "1-d"),
        (lambda: torch.bincount(torch.tensor([1, 2]), weights=torch.rand(3)), "same length"),
        (lambda: torch.histc(torch.tensor([1.0, float("inf")]), bins=4), "not finite"),
        (lambda: torch.histc(torch.tensor([1.0, 2.0]), bins=4, min=3, max=1), "max must be larger than min"),
        (lambda: torch.zeros(4).put_(torch.tensor([0, 1]), torch.ones(3)), "same number of elements"),
    ],
)
def test_patches_reject_bad_arguments_like_torch(op, expected: str) -> None:
    """Invalid arguments raise the same exception type and message from the patched kernel."""
    with pytest.raises((RuntimeError, IndexError), match=expected) as from_torch:
        op()
    patches.install(["bincount", "histc", "put_accumulate"], dispatch_key="CPU")
    with pytest.raises(from_torch.type, match=expected):
        op()


def test_put_index_out_of_range_raises_instead_of_wrapping_twice() -> None:
    """An index below -numel is an error, as in torch, not a second wrap-around."""
    patches.install(["put_accumulate"], dispatch_key="CPU")
    with pytest.raises((IndexError, RuntimeError)):
        torch.zeros(4).put_(torch.tensor([-5]), torch.ones(1), accumulate=True)


def test_bincount_empty_and_histc_constant_input() -> None:
    """Edge cases: an empty bincount gives minlength zeros; a constant histc widens the range by one."""
    expected_bins = torch.bincount(torch.tensor([], dtype=torch.int64), minlength=3)
    expected_hist = torch.histc(torch.tensor([2.0, 2.0]), bins=4)
    patches.install(["bincount", "histc"], dispatch_key="CPU")
    assert torch.equal(torch.bincount(torch.tensor([], dtype=torch.int64), minlength=3), expected_bins)
    assert torch.equal(torch.histc(torch.tensor([2.0, 2.0]), bins=4), expected_hist)


def test_embedding_bag_scale_grad_by_freq_divides_by_each_rows_count() -> None:
    """scale_grad_by_freq divides by the row's own count, as CUDA and the sparse path do (CPU's dense kernel does not)."""
    indices = torch.tensor([1, 2, 4, 5, 4, 3, 2, 9, 0, 4, 4])
    offsets = torch.tensor([0, 3, 3, 8])
    bag_of = [0, 0, 0, 2, 2, 2, 2, 2, 3, 3, 3]
    sizes = [3, 0, 5, 3]
    grad_out = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(indices, minlength=10)
    patches.install(["embedding_bag_backward"], dispatch_key="CPU")
    for mode in ("sum", "mean"):
        expected = torch.zeros(10, 3, dtype=torch.float64)
        for position, row in enumerate(indices.tolist()):
            scale = 1.0 / counts[row].item() / (sizes[bag_of[position]] if mode == "mean" else 1)
            expected[row] += grad_out[bag_of[position]] * scale
        weight = torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
        torch.nn.functional.embedding_bag(indices, weight, offsets, mode=mode, scale_grad_by_freq=True).backward(grad_out)
        torch.testing.assert_close(weight.grad, expected)


def test_channels_last_gradient_keeps_layout() -> None:
    """adaptive_avg_pool2d backward returns a channels-last grad_input for a channels-last input, like torch."""
    x = torch.randn(2, 3, 9, 11).contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.nn.functional.adaptive_avg_pool2d(x, (3, 4)).sum().backward()
    expected = x.grad.clone()
    x.grad = None
    patches.install(["adaptive_avg_pool2d_backward"], dispatch_key="CPU")
    torch.nn.functional.adaptive_avg_pool2d(x, (3, 4)).sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x.grad, expected)


AXIS_MAP_CASES = [
    pytest.param(e, id=e.id) for e in EXAMPLES
    if e.patch.startswith(("upsample_", "adaptive_avg_pool", "avg_pool3d"))
]


@pytest.mark.parametrize("example", AXIS_MAP_CASES)
@pytest.mark.parametrize("path", ["gather", "gemm"])
def test_axis_map_paths_agree_with_torch(example: Example, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both per-axis strategies (banded gather for long axes, GEMM for short ones) give torch's answer."""
    from detrun.patches import _common

    monkeypatch.setattr(_common, "KRONECKER_MAX_OUTER", 0)
    monkeypatch.setattr(_common, "GATHER_WHEN_OLD_LEN_OVER_K", 0 if path == "gather" else 1 << 30)
    call = example.build(CPU, torch.float64, False)
    expected = call.run()
    patches.install([example.patch], dispatch_key="CPU")
    torch.testing.assert_close(call.run(), expected)


def test_ctc_backward_large_vocabulary_path_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sorted-scatter path for large vocabularies gives the same gradient as the one-hot GEMM path."""
    from detrun.patches import losses

    call = next(e for e in EXAMPLES if e.patch == "ctc_loss_backward").build(CPU, torch.float64, False)
    expected = call.run()
    patches.install(["ctc_loss_backward"], dispatch_key="CPU")
    monkeypatch.setattr(losses, "CTC_ONE_HOT_MAX_ELEMENTS", 0)
    torch.testing.assert_close(call.run(), expected)


def test_out_overloads_write_into_the_given_tensors() -> None:
    """The .out / .grad_input overloads resize and fill the caller's tensors."""
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    expected_hist = torch.histc(x, bins=5)
    expected_median = torch.median(x, 1)
    patches.install(["histc", "median_dim"], dispatch_key="CPU")
    hist = torch.empty(0)
    assert torch.histc(x, bins=5, out=hist) is hist
    assert torch.equal(hist, expected_hist)
    values, indices = torch.empty(0), torch.empty(0, dtype=torch.int64)
    torch.median(x, 1, out=(values, indices))
    assert torch.equal(values, expected_median.values) and torch.equal(indices, expected_median.indices)


def test_grid_sample_backward_without_input_grad() -> None:
    """With only the grid requiring grad (output_mask [False, True]) the grid gradient is still right."""
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    grid = (torch.rand(1, 3, 4, 2, dtype=torch.float64) * 2 - 1).requires_grad_()
    torch.nn.functional.grid_sample(x, grid, align_corners=False).sum().backward()
    expected = grid.grad.clone()
    grid.grad = None
    patches.install(["grid_sampler_2d_backward"], dispatch_key="CPU")
    torch.nn.functional.grid_sample(x, grid, align_corners=False).sum().backward()
    torch.testing.assert_close(grid.grad, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("example", "dtype"), [c for c in CASES if c.values[1] in (torch.float32, torch.int64)])
def test_cuda_patch_is_deterministic_and_matches_cpu(example: Example, dtype: torch.dtype) -> None:
    """On CUDA under deterministic mode: no error, three bitwise-identical runs, and the CPU answer."""
    cuda = torch.device("cuda")
    expected = _as_tuple(example.build(CPU, dtype, False).run())
    call = example.build(cuda, dtype, False)
    patches.install([example.patch], dispatch_key="CUDA")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [_as_tuple(call.run()) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(previous)
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a.reshape(-1).view(torch.uint8) if a.is_floating_point() else a, b.reshape(-1).view(torch.uint8) if b.is_floating_point() else b)
    _assert_matches(example, example.build(CPU, dtype, False), expected, tuple(r.cpu() for r in runs[0]), dtype)
