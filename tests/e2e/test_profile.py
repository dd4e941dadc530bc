"""Tests for `detrun profile`: op capture, call sites, knowledge base, empirical check, CLI, JSON."""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from detrun.profiler import empirical  # noqa: E402
from detrun.profiler.capture import OpCapture  # noqa: E402
from detrun.profiler.kb import KnowledgeBase, parse_version, version_matches  # noqa: E402
from support.profile_schema import documented_schema, validate  # noqa: E402
from support.profile_text import assert_summary_matches_rows, messages  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "profile_ops.py"
CLI_TIMEOUT = 120


# --- helpers ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def detrun_command() -> tuple[str, ...]:
    """Return how to start the real CLI: the `detrun` script of this environment, else `python -m`."""
    search_path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    found = shutil.which("detrun", path=search_path)
    return (found,) if found else (sys.executable, "-m", "detrun.cli")


def run_cli(*args: str, cwd: Path | None = None, timeout: int = CLI_TIMEOUT,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `detrun ARGS` as a subprocess and return its result (text mode)."""
    return subprocess.run([*detrun_command(), *args], cwd=cwd or REPO, text=True, capture_output=True,
                          timeout=timeout, env=None if env is None else {**os.environ, **env})


def marker_line(path: Path, marker: str) -> int:
    """Return the 1-based line carrying `# profile: <marker>` (or any exact marker text)."""
    lines = path.read_text().splitlines()
    hits = [i + 1 for i, line in enumerate(lines) if line.rstrip().endswith(marker)]
    assert len(hits) == 1, f"marker {marker!r} found {len(hits)} times in {path}"
    return hits[0]


def ops_by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for op in data["ops"]:
        out.setdefault(op["op"], op)
    return out


def expected_patch(op: str) -> str | None:
    try:
        from detrun.patches import patch_for_op
    except (ImportError, AttributeError):
        return None
    return patch_for_op(op)


def write_script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


# --- acceptance 1: the bundled example -----------------------------------------------------------


@pytest.fixture(scope="module")
def example_profile(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path_factory.mktemp("example") / "profile.json"
    # As a new user runs it: from the repository, the script's relative path, an 80-column terminal.
    result = run_cli("profile", "--steps", "3", "--json", str(out), "examples/profile_ops.py", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    return result, json.loads(out.read_text())


# op -> (marker, nondeterministic on CUDA, raises under det mode, det mode fixes), from the torch docs
# and DESIGN.md's H100 table; the test also checks that this is what the knowledge base says.
EXAMPLE_EXPECTATIONS = {
    "aten::upsample_bilinear2d_backward": ("interpolate", True, False, True),
    "aten::_adaptive_avg_pool2d_backward": ("adaptive_avg_pool2d", True, True, False),
    "aten::embedding_dense_backward": ("embedding", False, False, False),
    "aten::index_add_": ("index_add_", True, False, True),
    "aten::scatter_add_": ("scatter_add_", True, False, True),
    "aten::nll_loss2d_forward": ("nll_loss", True, True, False),
    "aten::bincount": ("bincount", True, True, False),
}


@pytest.mark.parametrize("op", sorted(EXAMPLE_EXPECTATIONS))
def test_example_op_is_listed_with_user_line_cuda_status_and_patch(example_profile, op):
    _, data = example_profile
    marker, nondet, raises, fixes = EXAMPLE_EXPECTATIONS[op]
    entry = ops_by_name(data).get(op)
    assert entry is not None, f"{op} not captured; got {sorted(ops_by_name(data))}"
    site = entry["call_site"]
    assert Path(site["file"]) == EXAMPLE
    assert site["line"] == marker_line(EXAMPLE, f"# profile: {marker}"), entry
    assert entry["nondeterministic_cuda"] is nondet
    if nondet:  # the det-mode facts only matter for ops that can change bits
        assert entry["raises_in_det_mode"] is raises
        assert entry["det_mode_fixes"] is fixes
    assert entry["patch"] == expected_patch(op)
    assert entry["source"] and set(entry["source"]) <= {"docs", "measured-h100", "empirical"}


def test_example_table_on_stderr_and_script_stdout_untouched(example_profile):
    result, data = example_profile
    assert result.stdout.splitlines() == [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert "step 0 loss" in result.stdout
    assert "_adaptive_avg_pool2d_backward" in result.stderr
    assert "examples/profile_ops.py:" in result.stderr and str(REPO) not in result.stderr  # relative sites
    assert "predicted" in result.stderr  # labelled as CUDA predictions on a CPU run
    assert data["ran_on"] == ["cpu"] and data["reported_device"] == "cuda"
    # sorted by severity: the first rows are the worst
    order = ["raises", "nondeterministic", "measured", "deterministic", "ok"]
    ranks = [order.index(op["severity"]) for op in data["ops"]]
    assert ranks == sorted(ranks)


def test_example_table_fits_80_columns_and_the_summary_counts_its_rows(example_profile):
    result, data = example_profile
    lines = result.stderr.splitlines()
    too_wide = [line for line in lines if len(line) > 80]
    assert not too_wide, "\n".join(too_wide)
    rows = assert_summary_matches_rows(result.stderr)
    # The rows are the ops of the JSON that are not "not known", each named whole on its row.
    listed = [op for op in data["ops"] if op["verdict"] != "not known"]
    assert sorted((r["op"], r["verdict"], r["fix"]) for r in rows) == sorted(
        (op["op"], op["verdict"], op["fix"]) for op in listed)
    assert set(EXAMPLE_EXPECTATIONS) <= {r["op"] for r in rows}
    # The words follow the evidence: the H100 saw 6 distinct results, or one (docs only: "may change").
    words = {r["op"]: (r["verdict"], r["fix"]) for r in rows}
    assert words["aten::index_add_"] == ("changes bits", "det mode")
    assert words["aten::_adaptive_avg_pool2d_backward"] == ("may change", "patch")
    assert words["aten::embedding_dense_backward"] == ("deterministic", "-")
    said = messages(result.stderr)
    assert "stopped after 3 optimizer steps" in said[1], said
    assert said[-1].startswith("wrote ") and said[-1].endswith("profile.json"), said
    note = next(line for line in lines if line.startswith("1. "))
    assert note.startswith(f"1. {rows[0]['op']} at examples/profile_ops.py:")


def test_example_json_matches_documented_schema(example_profile):
    _, data = example_profile
    validate(data, documented_schema())
    assert data["schema_version"] == 1
    assert data["steps"] == {"limit": 3, "completed": 3, "stopped_by_limit": True}


def test_backward_op_reports_forward_line_not_backward_line(example_profile):
    _, data = example_profile
    entry = ops_by_name(data)["aten::_adaptive_avg_pool2d_backward"]
    assert entry["phases"] == ["backward"]
    assert entry["call_site"]["line"] != marker_line(EXAMPLE, "loss.backward()")


# --- acceptance 2: the empirical check on custom ops -----------------------------------------------

CUSTOM_OPS = """
    import os
    import torch

    @torch.library.custom_op("detrun_test::noisy_scale", mutates_args=())
    def noisy_scale(x: torch.Tensor) -> torch.Tensor:
        # Really nondeterministic: fresh OS entropy on every call.
        noise = int.from_bytes(os.urandom(4), "little") / 2**32
        return x * (1.0 + noise * 1e-3)

    @torch.library.custom_op("detrun_test::exact_scale", mutates_args=())
    def exact_scale(x: torch.Tensor) -> torch.Tensor:
        return x * 2.0

    x = torch.randn(16)
    for _ in range(3):
        y = noisy_scale(x)  # marker: noisy
        z = exact_scale(x)  # marker: exact
    print("done")
"""


def test_empirical_check_flags_unknown_nondeterministic_custom_op(tmp_path):
    script = write_script(tmp_path, "custom_ops.py", CUSTOM_OPS)
    out = tmp_path / "p.json"
    result = run_cli("profile", "--json", str(out), str(script))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
    data = json.loads(out.read_text())
    validate(data, documented_schema())
    ops = ops_by_name(data)
    noisy, exact = ops["detrun_test::noisy_scale"], ops["detrun_test::exact_scale"]
    assert noisy["measured_nondeterministic"] is True
    assert noisy["nondeterministic_cuda"] is None and noisy["kb"] is None  # the KB never heard of it
    assert noisy["severity"] == "measured" and "empirical" in noisy["source"]
    assert noisy["call_site"]["line"] == marker_line(script, "# marker: noisy")
    assert exact["measured_nondeterministic"] is False
    assert exact["severity"] == "ok"
    assert "detrun_test::noisy_scale" in result.stderr


def test_fail_on_nondeterministic_exits_4_and_no_empirical_skips_the_check(tmp_path):
    script = write_script(tmp_path, "custom_ops.py", CUSTOM_OPS)
    result = run_cli("profile", "-q", "--fail-on", "nondeterministic", str(script))
    assert result.returncode == 4, result.stderr
    assert result.stdout == "done\n"
    assert "--fail-on" in result.stderr
    # -q: only the summary and the fail-on line
    assert all(line.startswith("detrun:") for line in result.stderr.splitlines())
    assert len(result.stderr.splitlines()) == 2

    out = tmp_path / "p.json"
    result = run_cli("profile", "-q", "--no-empirical", "--fail-on", "nondeterministic", "--json", str(out),
                     str(script))
    assert result.returncode == 0, result.stderr
    noisy = ops_by_name(json.loads(out.read_text()))["detrun_test::noisy_scale"]
    assert noisy["measured_nondeterministic"] is None and noisy["measured"] == []


# --- acceptance 3: steps, exit codes, errors -------------------------------------------------------

FOREVER = """
    import torch

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = 0
    try:
        while True:
            opt.zero_grad()
            model(torch.ones(1, 2)).sum().backward()
            try:
                opt.step()
            except Exception:  # a broad handler must not swallow detrun's stop
                print("swallowed", flush=True)
            print(f"step {step}", flush=True)
            step += 1
    finally:
        print("finally ran", flush=True)
"""


def test_steps_stops_an_endless_loop_cleanly(tmp_path):
    script = write_script(tmp_path, "forever.py", FOREVER)
    out = tmp_path / "p.json"
    result = run_cli("profile", "--steps", "3", "--json", str(out), str(script), timeout=60)
    assert result.returncode == 0, result.stderr
    # Stops inside the third opt.step(), right after it completed.
    assert result.stdout.splitlines() == ["step 0", "step 1", "finally ran"]
    assert "stopped after 3 optimizer steps" in result.stderr
    assert "Traceback" not in result.stderr
    data = json.loads(out.read_text())
    assert data["steps"] == {"limit": 3, "completed": 3, "stopped_by_limit": True}
    assert data["exit_status"] == 0


def test_steps_zero_runs_to_the_end_and_profile_does_not_change_results(tmp_path):
    plain = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "4"], cwd=REPO, text=True,
                           capture_output=True, timeout=CLI_TIMEOUT)
    assert plain.returncode == 0, plain.stderr
    profiled = run_cli("profile", "--steps", "0", str(EXAMPLE), "--steps", "4")
    assert profiled.returncode == 0, profiled.stderr
    # Same losses bit for bit: the capture and the empirical re-runs (RNG restored) change nothing.
    assert profiled.stdout == plain.stdout
    assert "script ended with status 0 after 4 optimizer steps" in profiled.stderr


def test_missing_script_is_one_error_line_and_exit_2(tmp_path):
    result = run_cli("profile", str(tmp_path / "nope.py"))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("detrun: error:"), result.stderr


def test_unwritable_json_path_fails_before_running(tmp_path):
    script = write_script(tmp_path, "touch.py", """
        open("ran", "w").close()
    """)
    result = run_cli("profile", "--json", str(tmp_path / "missing" / "p.json"), str(script), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("detrun: error: cannot write") and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "ran").exists()


def test_script_exit_status_and_exception_pass_through(tmp_path):
    exits = write_script(tmp_path, "exits.py", """
        import sys
        print("hello")
        sys.exit(3)
    """)
    result = run_cli("profile", "-q", str(exits))
    assert (result.returncode, result.stdout) == (3, "hello\n")

    fails = write_script(tmp_path, "fails.py", """
        import torch
        layer = torch.nn.Linear(3, 2)
        layer(torch.ones(2, 4))
    """)
    result = run_cli("profile", "-q", str(fails))
    plain = subprocess.run([sys.executable, str(fails)], text=True, capture_output=True, timeout=CLI_TIMEOUT)
    assert result.returncode == plain.returncode == 1
    # The same traceback as plain python: no frames of detrun or of the dispatch mode's plumbing.
    ours = [line for line in result.stderr.splitlines() if not line.startswith("detrun:")]
    assert ours == plain.stderr.splitlines()


def test_module_target_and_device_auto(tmp_path):
    package = tmp_path / "pkg_under_test"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "accum.py").write_text(textwrap.dedent("""
        import sys
        import torch
        print("args", sys.argv[1:])
        x = torch.zeros(4)
        x.index_put_((torch.tensor([0, 1, 1]),), torch.ones(3), accumulate=True)  # marker: accumulate
    """))
    out = tmp_path / "auto.json"
    # PYTHONPATH: the runner looks modules up before it puts the cwd on sys.path (see the report).
    env = {"PYTHONPATH": str(tmp_path)}
    result = run_cli("profile", "-q", "--device", "auto", "--json", str(out), "-m", "pkg_under_test.accum",
                     "--flag", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "args ['--flag']\n"
    auto = ops_by_name(json.loads(out.read_text()))["aten::index_put_"]
    # On CPU the docs say accumulate=True is nondeterministic (fixed by det mode); on CUDA the
    # H100 measured it deterministic.  --device auto judges the CPU it ran on.
    assert auto["reported_device"] == "cpu"
    assert auto["nondeterministic"] is True and auto["det_mode_fixes"] is True
    assert auto["nondeterministic_cuda"] is False
    assert auto["call_site"]["line"] == marker_line(package / "accum.py", "# marker: accumulate")

    out = tmp_path / "cuda.json"
    result = run_cli("profile", "-q", "--json", str(out), "-m", "pkg_under_test.accum", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    cuda = ops_by_name(json.loads(out.read_text()))["aten::index_put_"]
    assert cuda["reported_device"] == "cuda" and cuda["nondeterministic"] is False


def test_help_teaches_options_and_exit_codes():
    result = run_cli("profile", "--help")
    assert result.returncode == 0
    text_of_help = " ".join(result.stdout.split())
    for text in ("--steps", "0 runs the script to its end", "--json", "--fail-on", "code 4", "--no-empirical",
                 "--device", "-m, --module", "-q", "Exit codes"):
        assert text in text_of_help, text


# --- acceptance 4: the GPU benchmark degrades cleanly ----------------------------------------------


def test_gpu_profile_benchmark_exits_cleanly_without_cuda(example_profile):
    if torch.cuda.is_available():
        pytest.skip("has CUDA: the benchmark would really run")
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_profile.py")], cwd=REPO, text=True,
                            capture_output=True, timeout=CLI_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert "no CUDA device" in result.stdout
    # Its report renderer cannot run for real here; feed it this run's JSON to catch mistakes early.
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_profile
    finally:
        sys.path.pop(0)
    _, data = example_profile
    markdown = gpu_profile.render(dict(data, gpu="Fake GPU"), "detrun: stderr")
    assert "# detrun profile on Fake GPU" in markdown and "`aten::_adaptive_avg_pool2d_backward`" in markdown
    assert gpu_profile.slug("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"


# --- in-process: capture, call sites, threads ------------------------------------------------------


def _capture(**kwargs: Any) -> OpCapture:
    kb = KnowledgeBase.load(torch.__version__)
    errors: list[str] = []
    options = dict(kb_device="cuda", run_empirical=True, keep_kernel_probes=False, on_hook_error=errors.append)
    options.update(kwargs)
    capture = OpCapture(kb, **options)
    capture.test_errors = errors  # type: ignore[attr-defined]
    return capture


def _record(capture: OpCapture, op: str) -> Any:
    hits = [r for r in capture.records.values() if r.info.display == op]
    assert hits, f"{op} not captured: {sorted(r.info.display for r in capture.records.values())}"
    return hits[0]


def _this_line(marker: str) -> int:
    return marker_line(Path(__file__), marker)


class _PoolNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.adaptive_avg_pool2d(x, (2, 3))  # site: adaptive pool forward


def test_backward_ops_on_cpu_are_captured_with_their_forward_call_site():
    net = _PoolNet()
    capture = _capture()
    with capture:
        loss = net(torch.randn(2, 2, 9, 9)).square().sum()
        loss.backward()  # site: backward call
    backward = _record(capture, "aten::_adaptive_avg_pool2d_backward")
    assert backward.phases == {"backward"}
    assert backward.call_site.line == _this_line("# site: adaptive pool forward")
    assert backward.call_site.function == "forward"
    conv_backward = _record(capture, "aten::convolution_backward")
    assert conv_backward.call_site.line == _this_line("x = self.conv(x)")
    # AccumulateGrad has no forward site: it falls back to the .backward() line.
    assert capture.hook_errors == []


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_dispatch_mode_follows_thread_local_state_to_worker_threads():
    # The autograd engine hands the caller's at::ThreadLocalState (dispatch-mode stack included) to
    # its CUDA device threads.  TorchScript's fork uses the same mechanism on the inter-op pool, so
    # ops run there must be captured too: that is the CPU-checkable half of the CUDA argument.
    @torch.jit.script
    def work(x: torch.Tensor) -> torch.Tensor:
        return (x * 3).cos()

    @torch.jit.script
    def fan_out(x: torch.Tensor) -> torch.Tensor:
        futures = [torch.jit.fork(work, x) for _ in range(4)]
        return torch.stack([torch.jit.wait(f) for f in futures])

    x = torch.randn(8)
    fan_out(x)
    fan_out(x)  # past the profiling executor's warm-up
    seen_threads: set[int] = set()
    capture = _capture()
    original = capture._observe

    def spy(func: Any, args: Any, kwargs: Any) -> None:
        if func._schema.name == "aten::cos":
            seen_threads.add(threading.get_ident())
        original(func, args, kwargs)

    capture._observe = spy  # type: ignore[method-assign]
    with capture:
        fan_out(x)
    assert _record(capture, "aten::cos").count == 4
    assert seen_threads - {threading.get_ident()}, "no op was captured on another thread"


@pytest.mark.gpu
def test_cuda_backward_on_engine_thread_is_captured_with_forward_site():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    net = _PoolNet().cuda()
    threads: dict[str, set[int]] = {"forward": set(), "backward": set()}
    capture = _capture()
    original = capture._observe

    def spy(func: Any, args: Any, kwargs: Any) -> None:
        phase = "backward" if torch._C._current_autograd_node() is not None else "forward"
        threads[phase].add(threading.get_ident())
        original(func, args, kwargs)

    capture._observe = spy  # type: ignore[method-assign]
    with capture:
        net(torch.randn(2, 2, 9, 9, device="cuda")).square().sum().backward()
    backward = _record(capture, "aten::_adaptive_avg_pool2d_backward")
    assert backward.device == "cuda"
    assert backward.call_site.line == _this_line("# site: adaptive pool forward")
    assert threads["backward"] - threads["forward"], "CUDA backward expected on an engine thread"


def test_hook_failure_never_changes_the_program():
    capture = _capture()

    def broken(func: Any, args: Any, kwargs: Any) -> None:
        raise ValueError("bug in detrun")

    capture._observe = broken  # type: ignore[method-assign]
    x = torch.arange(6.0)
    with capture:
        y = (x * 2).sum()
        with pytest.raises(RuntimeError):  # the user's own error still reaches the user
            torch.ones(2) + torch.ones(3)
    assert y.item() == 30.0
    assert capture.hook_errors and "bug in detrun" in capture.hook_errors[0]
    assert len(capture.test_errors) == 1  # reported once, not once per op


def test_empirical_check_leaves_the_rng_stream_alone():
    def program() -> torch.Tensor:
        x = torch.randn(64)
        y = F.dropout(x, 0.5, training=True) + torch.rand(64)
        return torch.cat([y, torch.randn(4), torch.randperm(8).float()])

    torch.manual_seed(1)
    expected = program()
    torch.manual_seed(1)
    capture = _capture()
    with capture:
        got = program()
    assert torch.equal(got, expected)
    assert capture.checks_run > 0
    assert _record(capture, "aten::bernoulli_.float").verdicts[0].reason == "random by nature"


def test_in_place_op_checked_on_copies_and_user_tensor_updated_once():
    capture = _capture()
    base = torch.zeros(6)
    view = base[::2]  # a strided view: the copies must keep its layout
    with capture:
        view.add_(1.0)
    assert base.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert _record(capture, "aten::add_.Tensor").measured_nondeterministic is False


# --- CUDA kernel names (the GPU path, exercised with stand-ins) ----------------------------------


def test_kernel_names_keep_distinct_cuda_kernels_in_launch_order():
    from types import SimpleNamespace

    from detrun.profiler.kernel_names import kernel_names

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    events = [SimpleNamespace(name="aten::index_add_", device_type=cpu),
              SimpleNamespace(name="Memset (Device)", device_type=cuda),
              SimpleNamespace(name="indexFuncLargeIndex<float>", device_type=cuda),
              SimpleNamespace(name="Memcpy DtoD (Device -> Device)", device_type=cuda),
              SimpleNamespace(name="indexFuncLargeIndex<float>", device_type=cuda),
              SimpleNamespace(name="vectorized_elementwise_kernel", device_type=cuda)]
    assert kernel_names(SimpleNamespace(events=lambda: events)) == ["indexFuncLargeIndex<float>",
                                                                  "vectorized_elementwise_kernel"]


def test_capture_kernels_without_cuda_drops_probes_and_lists_nothing():
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    from detrun.profiler.kernel_names import capture_kernels

    capture = _capture()
    with capture:
        torch.ones(4).cumsum(0)
    record = _record(capture, "aten::cumsum")
    assert record.probe is None  # CPU ops never keep probe inputs
    record.probe = ((torch.ones(4), 0), {})
    assert capture_kernels([record], warn=pytest.fail) == 0
    assert record.probe is None and record.kernels == []


# --- empirical helpers ------------------------------------------------------------------------------


def test_bitwise_equal_handles_nan_signed_zero_nesting_and_non_tensors():
    nan = torch.tensor([float("nan"), 1.0])
    assert empirical.bitwise_equal(nan, nan.clone())
    assert not empirical.bitwise_equal(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert empirical.bitwise_equal((torch.tensor([1, 2]), 3, None), (torch.tensor([1, 2]), 3, None))
    assert not empirical.bitwise_equal((torch.tensor([1, 2]), 3), (torch.tensor([1, 2]), 4))
    assert empirical.bitwise_equal(float("nan"), float("nan"))
    assert not empirical.bitwise_equal(torch.tensor([True]), torch.tensor([False]))
    assert empirical.bitwise_equal(torch.tensor([1 + 2j]), torch.tensor([1 + 2j]))
    assert not empirical.bitwise_equal(torch.ones(2), torch.ones(3))
    assert not empirical.bitwise_equal(torch.ones(2), [1.0, 1.0])


def test_exact_copy_keeps_strides_offset_and_overlap():
    base = torch.arange(12.0)
    for view in (base[1::3], base.view(3, 4).t(), torch.arange(3.0).expand(4, 3)):
        copy = empirical._exact_copy(view)
        assert copy.stride() == view.stride() and copy.storage_offset() == view.storage_offset()
        assert torch.equal(copy, view)
        assert copy.untyped_storage().data_ptr() != view.untyped_storage().data_ptr()


def test_random_uninitialised_and_view_ops_are_skipped():
    aten = torch.ops.aten
    for op in (aten.bernoulli_.float, aten.native_dropout.default, aten.randperm.default, aten.normal_.default,
               aten.multinomial.default, aten.uniform_.default, aten.rand.default):
        assert empirical.skip_reason(op) == "random by nature", op
    for op in (aten.empty.memory_format, aten.new_empty.default, aten.empty_like.default, aten.resize_.default):
        assert empirical.skip_reason(op) == "returns uninitialised memory", op
    assert empirical.skip_reason(aten.view.default) == "view: computes nothing"
    assert empirical.skip_reason(aten.index_add_.default) is None


# --- knowledge base ---------------------------------------------------------------------------------


def test_knowledge_base_is_json_data_naming_real_ops():
    path = REPO / "detrun" / "profiler" / "kb" / "torch.json"
    data = json.loads(path.read_text())  # data, not code
    assert data["schema_version"] == 1
    kb = KnowledgeBase.load(torch.__version__)
    assert kb.rules
    for rule in kb.rules:
        assert rule.source and set(rule.source) <= {"docs", "measured-h100"}
        assert not (rule.raises_in_det_mode and rule.det_mode_fixes), rule.id
        for op in rule.ops:
            namespace, _, rest = op.partition("::")
            name, _, overload = rest.partition(".")
            packet = getattr(getattr(torch.ops, namespace), name, None)
            assert packet is not None, f"{rule.id}: {op} is not an op in torch {torch.__version__}"
            assert not overload or overload in packet.overloads(), f"{rule.id}: {op}"
    # Patch names come from detrun.patches only: no rule may carry one.
    assert not [rule for rule in data["rules"] if any("patch" in key for key in rule)]


def test_knowledge_base_version_ranges_pick_the_right_claim():
    assert parse_version("2.13.0+cu130") == (2, 13, 0)
    assert parse_version("2.6.0a0+git123") == (2, 6, 0)
    assert version_matches(">=2.5,<2.13", (2, 11, 0))
    assert not version_matches(">=2.5,<2.13", (2, 13))
    old = KnowledgeBase.load("2.4.1")
    new = KnowledgeBase.load("2.11.0")
    args = {"self": torch.ones(3)}
    assert old.match("cuda", "aten::cumsum", "default", args).raises_in_det_mode is True
    cumsum = new.match("cuda", "aten::cumsum", "default", args)
    assert cumsum.det_mode_fixes is True and cumsum.source == ("measured-h100",)
    assert new.match("cuda", "aten::cumsum", "default", {"self": torch.ones(3, dtype=torch.long)}) is None


def test_knowledge_base_argument_predicates():
    kb = KnowledgeBase.load(torch.__version__)
    weights = {"self": torch.tensor([0, 1]), "weights": torch.ones(2)}
    assert kb.match("cuda", "aten::bincount", "default", weights).id == "bincount_weights"
    assert kb.match("cuda", "aten::bincount", "default", {"self": torch.tensor([0, 1]), "weights": None}) is None
    two = {"self": torch.ones(3), "reduce": "sum"}
    assert kb.match("cuda", "aten::scatter_reduce_", "two", two).id == "scatter_reduce_sum_mean"
    assert kb.match("cuda", "aten::scatter_reduce_", "two", dict(two, reduce="prod")).raises_in_det_mode
    assert kb.match("cuda", "aten::scatter_reduce_", "two", dict(two, reduce="amax")) is None
    mask = {"self": torch.ones(3), "indices": [torch.tensor([True, False, True])], "accumulate": False}
    assert kb.match("cuda", "aten::index_put_", "default", mask) is None  # a mask cannot collide
