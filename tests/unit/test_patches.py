"""The detrun.patches registry, install/uninstall at the dispatcher, and the determinism policies."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import detrun.patches as patches
from detrun.patches import patch_policy as policy
from detrun.patches._core import Kernel, Patch
from support.patch_examples import EXAMPLES, Example

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _clean_state():
    """Start and end every test with no patch installed and no policy applied."""
    policy.remove_policy()
    patches.uninstall()
    yield
    policy.remove_policy()
    patches.uninstall()


def _bits(value) -> list[torch.Tensor]:
    """Return the outputs of an op as raw bytes, so comparisons are bitwise."""
    outputs = value if isinstance(value, tuple) else (value,)
    return [o.reshape(-1).contiguous().view(torch.uint8) if o.is_floating_point() else o for o in outputs]


def _same_bits(a, b) -> bool:
    """Return whether two op results are bitwise identical."""
    return all(torch.equal(x, y) for x, y in zip(_bits(a), _bits(b), strict=True))


FLOAT32_EXAMPLES = [
    pytest.param(e, id=e.id) for e in EXAMPLES if torch.float32 in e.dtypes or torch.int64 in e.dtypes
]


def _dtype(example: Example) -> torch.dtype:
    """Return the dtype to exercise an example with: float32 where it applies, else int64."""
    return torch.float32 if torch.float32 in example.dtypes else torch.int64


# ------------------------------------------------------------------------------------------ registry / API


def test_import_is_cheap_and_installs_nothing() -> None:
    """Importing detrun.patches neither imports torch nor registers a kernel."""
    code = (
        "import sys, detrun.patches as p; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert p.installed() == [], p.installed(); print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_registry_entries_are_complete() -> None:
    """Every patch has a stable name, aten overloads with schemas, an upstream reference and a direct impl."""
    assert patches.names() == sorted(patches.REGISTRY)
    assert len(patches.names()) >= 20
    for name, patch in patches.REGISTRY.items():
        assert patch.name == name
        assert patch.ops and all(op.startswith("aten::") for op in patch.ops)
        assert all(k.schema.startswith(f"aten::{k.op}(") for k in patch.kernels)
        assert patch.upstream.startswith("aten/src/ATen/native/")
        assert callable(patch.impl) and patch.impl.__doc__
        assert patch.unsupported_reason() is None, f"{name}: {patch.unsupported_reason()}"


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        ("aten::_adaptive_avg_pool2d_backward", "adaptive_avg_pool2d_backward"),
        ("aten::_adaptive_avg_pool2d_backward.default", "adaptive_avg_pool2d_backward"),
        ("aten._adaptive_avg_pool2d_backward.out", "adaptive_avg_pool2d_backward"),
        ("aten::adaptive_avg_pool2d", "adaptive_avg_pool2d_backward"),
        ("aten::median.dim", "median_dim"),
        ("aten::nanmedian.dim_values", "nanmedian_dim"),
        ("aten::bincount", "bincount"),
        ("aten::histc", "histc"),
        ("aten::put_", "put_accumulate"),
        ("aten::nll_loss2d_forward", "nll_loss2d_forward"),
        ("aten::grid_sampler_2d_backward", "grid_sampler_2d_backward"),
        ("aten::cudnn_grid_sampler_backward", "grid_sampler_2d_backward"),
        ("aten::upsample_bilinear2d_backward", "upsample_bilinear2d_backward"),
        ("aten::max_pool3d_with_indices_backward", "max_pool3d_backward"),
        ("aten::reflection_pad2d_backward", "reflection_pad_backward"),
        ("aten::scatter_reduce.two", "scatter_reduce"),
        ("aten::mm", None),
        ("aten::index_add_", None),
        ("not an op", None),
    ],
)
def test_patch_for_op(op: str, expected: str | None) -> None:
    """patch_for_op accepts profiler spellings with and without overloads."""
    assert patches.patch_for_op(op) == expected


def test_every_covered_overload_maps_back_to_its_patch() -> None:
    """Each overload a patch declares resolves to that patch."""
    for name, patch in patches.REGISTRY.items():
        for op in patch.ops:
            assert patches.patch_for_op(op) == name


def test_install_rejects_unknown_names() -> None:
    """A typo is an error, not a silent no-op."""
    with pytest.raises(KeyError, match="no_such_patch"):
        patches.install(["no_such_patch"])
    assert patches.installed() == []


# ------------------------------------------------------------------------------------------ install / uninstall


@pytest.mark.parametrize("example", FLOAT32_EXAMPLES)
def test_uninstall_restores_torch_bitwise(example: Example) -> None:
    """Install, use, uninstall: torch's kernel is back, bit for bit, and the patch is no longer reached."""
    call = example.build(CPU, _dtype(example), False)
    patch = patches.REGISTRY[example.patch]
    before_install = call.run()
    patches.install([example.patch], dispatch_key="CPU")
    calls = patch.calls
    call.run()
    assert patch.calls == calls + 1
    patches.uninstall()
    after_uninstall = call.run()
    assert patch.calls == calls + 1
    assert _same_bits(before_install, after_uninstall)
    assert not patch.is_installed("CPU")


def test_install_twice_is_harmless() -> None:
    """A second install is a no-op: one registration, one call per op call, one uninstall undoes it."""
    patch = patches.REGISTRY["histc"]
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    expected = torch.histc(x, bins=10)
    assert patches.install(["histc"], dispatch_key="CPU") == ["histc"]
    assert patches.install(["histc"], dispatch_key="CPU") == ["histc"]
    assert patch.install("CPU") is True
    assert patches.installed() == [("histc", "CPU")]
    calls = patch.calls
    assert torch.equal(torch.histc(x, bins=10), expected)
    assert patch.calls == calls + 1
    patch.uninstall("CPU")
    assert patches.installed() == []
    torch.histc(x, bins=10)
    assert patch.calls == calls + 1


def test_default_key_is_cuda_and_leaves_cpu_alone() -> None:
    """install() registers for CUDA only: CPU ops keep torch's kernels."""
    installed = patches.install()
    assert sorted(installed) == patches.names()
    assert {key for _, key in patches.installed()} == {"CUDA"}
    patch = patches.REGISTRY["adaptive_avg_pool2d_backward"]
    calls = patch.calls
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    F.adaptive_avg_pool2d(x, 4).sum().backward()
    assert patch.calls == calls


def test_uninstall_removes_every_key() -> None:
    """uninstall() drops registrations for all dispatch keys at once."""
    patches.install(["bincount"], dispatch_key="CPU")
    patches.install(["bincount"], dispatch_key="CUDA")
    assert patches.installed() == [("bincount", "CPU"), ("bincount", "CUDA")]
    patches.uninstall()
    assert patches.installed() == []


def test_nn_module_and_autograd_reach_the_patch() -> None:
    """A model's backward goes through the patched kernels with no change to the model code."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.ReLU(),
        torch.nn.Upsample(scale_factor=2, mode="bilinear"),
        torch.nn.AdaptiveAvgPool2d((3, 5)),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 15, 2),
    )
    x = torch.randn(4, 3, 11, 13)
    model(x).square().sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    patches.install(["adaptive_avg_pool2d_backward", "upsample_bilinear2d_backward"], dispatch_key="CPU")
    pool, upsample = patches.REGISTRY["adaptive_avg_pool2d_backward"], patches.REGISTRY["upsample_bilinear2d_backward"]
    pool_calls, upsample_calls = pool.calls, upsample.calls
    model(x).square().sum().backward()
    assert pool.calls == pool_calls + 1 and upsample.calls == upsample_calls + 1
    for got, want in zip((p.grad for p in model.parameters()), expected):
        torch.testing.assert_close(got, want)


def test_schema_change_blocks_install() -> None:
    """A patch written against another schema refuses to install (with a warning) rather than misread arguments."""
    stale = Patch(
        name="stale_histc",
        kernels=(Kernel("histc", "aten::histc(Tensor self, int bins) -> Tensor", lambda *a: None),),
        impl=lambda *a: None,
        upstream="aten/src/ATen/native/cuda/SummaryOps.cu: _histc_cuda",
    )
    assert "changed schema" in (stale.unsupported_reason() or "")
    with pytest.warns(RuntimeWarning, match="stale_histc not installed"):
        assert stale.install("CPU") is False
    assert not stale.is_installed("CPU")
    assert torch.histc(torch.tensor([1.0, 2.0]), bins=2).tolist() == [1.0, 1.0]


def test_version_gate_blocks_install() -> None:
    """A patch gated on a newer torch is not installed."""
    future = Patch(
        name="future_histc",
        kernels=patches.REGISTRY["histc"].kernels,
        impl=patches.REGISTRY["histc"].impl,
        upstream="aten/src/ATen/native/cuda/SummaryOps.cu: _histc_cuda",
        min_torch=(99, 0),
    )
    with pytest.warns(RuntimeWarning, match="needs torch >= 99.0"):
        assert future.install("CPU") is False


def test_no_override_warning_leaks_to_users() -> None:
    """torch's one-time 'Overriding a previously registered kernel' warning is expected and kept quiet."""
    code = (
        "import warnings; warnings.simplefilter('always'); "
        "import detrun.patches as p; p.install(dispatch_key='CPU'); p.install(); print(len(p.installed()))"
    )
    result = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == 2 * len(patches.names())
    assert "Overriding" not in result.stderr


# ------------------------------------------------------------------------------------------ policy


@pytest.fixture
def non_default_flags(monkeypatch: pytest.MonkeyPatch):
    """Set flags to values a policy must restore, and put them back afterwards."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = False
    yield
    # Remove a policy the test left applied first: removed later (by _clean_state), it would put back
    # the non-default flags it saved, and cudnn.benchmark = True would leak into the next test module.
    policy.remove_policy()
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


def test_strict_policy_sets_flags_and_installs_everything(non_default_flags) -> None:
    """strict: deterministic torch, no cudnn autotuning, a cuBLAS workspace config and every patch for CUDA."""
    applied = policy.apply_policy("strict")
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic is True
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert sorted(applied["patches"]) == patches.names()
    assert sorted(name for name, key in patches.installed() if key == "CUDA") == patches.names()
    assert applied["policy"] == "strict"
    assert applied["flags"]["use_deterministic_algorithms"] is True
    assert json.loads(json.dumps(applied)) == applied  # plain data: it goes into the trace


def test_remove_policy_restores_previous_flags(non_default_flags) -> None:
    """remove_policy puts every flag, the environment and the dispatcher back as they were."""
    fill = torch.utils.deterministic.fill_uninitialized_memory
    policy.apply_policy("strict", fill_uninitialized_memory=False)
    assert torch.utils.deterministic.fill_uninitialized_memory is False  # a session turns it on when needed
    policy.remove_policy()
    assert torch.utils.deterministic.fill_uninitialized_memory is fill
    assert torch.are_deterministic_algorithms_enabled() is False
    assert torch.backends.cudnn.benchmark is True and torch.backends.cudnn.deterministic is False
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert patches.installed() == []
    policy.remove_policy()  # a second removal is a no-op


def test_policy_keeps_a_users_cublas_config_and_warn_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """An existing CUBLAS_WORKSPACE_CONFIG and warn_only mode survive apply + remove."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        applied = policy.apply_policy("strict")
        assert applied["flags"]["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
        assert torch.is_deterministic_algorithms_warn_only_enabled() is False
        policy.remove_policy()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
        assert torch.is_deterministic_algorithms_warn_only_enabled() is True
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def test_minimal_policy_installs_only_flagged_ops(non_default_flags) -> None:
    """minimal: the same flags, and only the patches covering the profiled ops."""
    applied = policy.apply_policy(
        "minimal", {"aten::_adaptive_avg_pool2d_backward", "aten::histc", "aten::mm", "aten::median.dim"}
    )
    assert applied["patches"] == ["adaptive_avg_pool2d_backward", "histc", "median_dim"]
    assert applied["unpatched_ops"] == ["aten::mm"]
    assert sorted(name for name, _ in patches.installed()) == applied["patches"]
    assert torch.are_deterministic_algorithms_enabled()
    policy.remove_policy()
    assert patches.installed() == []


def test_applying_a_second_policy_restores_the_original_on_removal(non_default_flags) -> None:
    """Policies do not stack: removal returns to the state before the first one."""
    policy.apply_policy("strict")
    policy.apply_policy("minimal", {"aten::histc"})
    assert [name for name, _ in patches.installed()] == ["histc"]
    policy.remove_policy()
    assert torch.are_deterministic_algorithms_enabled() is False
    assert torch.backends.cudnn.benchmark is True
    assert patches.installed() == []


def test_unknown_policy_is_rejected() -> None:
    """Only strict and minimal exist."""
    with pytest.raises(ValueError, match="unknown policy"):
        policy.apply_policy("lenient")


def test_load_profile_ops(tmp_path) -> None:
    """The profile reader takes the flagged ops and is lenient about the shape."""
    report = tmp_path / "profile.json"
    report.write_text(json.dumps({"ops": [
        {"op": "aten::_adaptive_avg_pool2d_backward", "nondeterministic_cuda": True, "count": 3},
        {"op": "aten::mm", "nondeterministic_cuda": False},
        {"name": "aten::histc"},
        "aten::bincount",
        {"nondeterministic_cuda": True},
        42,
        {"op": "aten::put_", "nondeterministic_cuda": None, "measured_nondeterministic": True},
        {"op": "aten::median.dim", "nondeterministic_cuda": None, "severity": "raises"},
        {"op": "aten::sort", "nondeterministic_cuda": None, "measured_nondeterministic": None, "severity": "ok"},
    ], "version": 1}))
    assert policy.load_profile_ops(report) == {
        "aten::_adaptive_avg_pool2d_backward", "aten::histc", "aten::bincount", "aten::put_", "aten::median.dim"
    }
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps([{"op": "aten::put_"}]))
    assert policy.load_profile_ops(bare) == {"aten::put_"}
    (tmp_path / "empty.json").write_text("{}")
    assert policy.load_profile_ops(tmp_path / "empty.json") == set()


def test_profile_to_minimal_policy_round_trip(tmp_path, non_default_flags) -> None:
    """--policy minimal --from-profile: the ops read from a profile pick the patches."""
    report = tmp_path / "profile.json"
    report.write_text(json.dumps({"ops": [{"op": "aten::grid_sampler_2d_backward", "nondeterministic_cuda": True}]}))
    applied = policy.apply_policy("minimal", policy.load_profile_ops(report))
    assert applied["patches"] == ["grid_sampler_2d_backward"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_strict_policy_makes_adaptive_avg_pool_backward_run_on_cuda() -> None:
    """The motivating bug: AdaptiveAvgPool2d backward raises under deterministic mode on CUDA until patched."""
    x = torch.randn(8, 16, 13, 13, device="cuda", requires_grad=True)
    policy.apply_policy("strict")
    grads = []
    for _ in range(3):
        x.grad = None
        F.adaptive_avg_pool2d(x, (5, 5)).square().sum().backward()
        grads.append(x.grad.clone())
    assert all(torch.equal(g.view(torch.int32), grads[0].view(torch.int32)) for g in grads)
