"""Backend flags and thread counts are recorded with their step and pinned on replay; CUDA kernel sequences.

The end-to-end tests run examples/backend_flags.py through the real CLI; the hook mechanics are
tested in-process with a stand-in session; the kernel capture (which needs CUDA) is tested through
its pure parts and a stand-in torch.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, detrun, run, verdict
from detrun.engine.sources import cuda_kernels as kernels
from detrun.engine.sources.cuda_kernels import KernelSequence, kernel_launches
from detrun.engine.session import MISSING
from detrun.engine.step_clock import StepClock
from detrun.trace.kernel_codec import StringTable, decode_steps, encode_step

BACKEND_FLAGS = str(EXAMPLES / "backend_flags.py")


# ------------------------------------------------------------------------------ end to end (CLI)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Record examples/backend_flags.py once with 2 intra-op threads; return (directory, stdout)."""
    directory = tmp_path_factory.mktemp("backends")
    result = detrun("record", BACKEND_FLAGS, cwd=directory, env={"NTHREADS": "2"})
    assert result.returncode == 0, result.stderr
    return directory, result.stdout


def _steps(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("step ")]


def test_flag_changes_are_recorded_with_their_step(recorded: tuple[Path, str]) -> None:
    from detrun.trace import read_trace

    directory, stdout = recorded
    assert "step 3: benchmark=True precision=highest" in stdout
    assert "step 5: benchmark=True precision=medium" in stdout
    trace = read_trace(str(directory / "trace.zst"))
    initial = trace.of("backends")[0]
    assert initial["cudnn.benchmark"] is False and initial["float32_matmul_precision"] == "highest"
    changes = trace.of("backends.set")
    assert [(c[0], c[1], c[2]) for c in changes] == [
        (2, "backend_flags.py:54", "torch.backends.cudnn.benchmark"),
        (4, "backend_flags.py:56", "torch.set_float32_matmul_precision")]
    assert changes[0][3] == {"cudnn.benchmark": True}
    assert changes[1][3]["float32_matmul_precision"] == "medium"
    assert trace.of("threads.set") == [[0, "backend_flags.py:27", "torch.set_num_threads", [2, 2]]]
    assert trace.of("env.torch")[0]["version"].startswith("2.")
    assert trace.of("kernels") == []  # no CUDA here: the kernel capture does nothing

    shown = detrun("show", "--json", "trace.zst", cwd=directory)
    assert shown.returncode == 0, shown.stderr
    import json

    summary = json.loads(shown.stdout)
    assert [(c["step"], c["call"]) for c in summary["backend_changes"]] == [
        (2, "torch.backends.cudnn.benchmark"), (4, "torch.set_float32_matmul_precision")]


def test_replay_reapplies_the_flags_at_the_same_steps(recorded: tuple[Path, str]) -> None:
    directory, stdout = recorded
    replayed = detrun("replay", "trace.zst", BACKEND_FLAGS, cwd=directory, env={"NTHREADS": "2"})
    assert replayed.returncode == 0, replayed.stderr
    assert verdict(replayed.stderr).startswith("detrun: REPRODUCED (6 steps"), replayed.stderr
    assert _steps(replayed.stdout) == _steps(stdout)
    assert replayed.stdout == stdout


def test_flag_set_at_another_step_is_a_divergence(recorded: tuple[Path, str]) -> None:
    directory, _ = recorded
    early = detrun("replay", "-q", "trace.zst", BACKEND_FLAGS, cwd=directory, env={"NTHREADS": "2", "BENCHMARK_STEP": "1"})
    line = verdict(early.stderr)
    # The flag change is an event mismatch: the likely cause beside the verdict, which the
    # stdout check decides (the script prints the flag it sees).
    assert line.startswith("detrun: DIVERGED: "), line
    assert ("likely cause: torch.backends.cudnn.benchmark = True at backend_flags.py:54 after step 1, but the "
            "recording made that change after step 2") in line, line
    # Pinned: the flag went back to False when the script set it after step 1, and the recorded
    # change applies once step 2 is over (before the script's print).
    assert "step 1: benchmark=False" in early.stdout and "step 2: benchmark=True" in early.stdout

    # Made late: pinned at the recorded step, so every check matches; the mismatch is listed as a cause.
    late = detrun("replay", "-v", "trace.zst", BACKEND_FLAGS, cwd=directory, env={"NTHREADS": "2", "BENCHMARK_STEP": "3"})
    assert verdict(late.stderr).startswith("detrun: REPRODUCED"), late.stderr
    assert ("cause: the recording made torch.backends.cudnn.benchmark = True after step 2 (backend_flags.py:54); "
            "the replay had not by the end of step 3") in late.stderr, late.stderr


def test_another_thread_count_is_named_as_the_likely_cause(recorded: tuple[Path, str]) -> None:
    directory, _ = recorded
    replayed = detrun("replay", "-q", "trace.zst", BACKEND_FLAGS, cwd=directory, env={"NTHREADS": "1"})
    line = verdict(replayed.stderr)
    assert line.startswith("detrun: DIVERGED"), line  # the loss of the first backward() already differs
    assert "likely cause: torch intra-op threads: recorded 2, now 1 (set by torch.set_num_threads at " \
           "backend_flags.py:27 before the first optimizer step)" in line


def test_unpinned_thread_count_is_named_as_the_likely_cause(recorded: tuple[Path, str]) -> None:
    # pin_threads=False is the library side of `detrun replay --no-pin-threads`; OMP_NUM_THREADS=1
    # gives torch one intra-op thread and the script, without NTHREADS, keeps it.
    directory, _ = recorded
    code = ("from detrun.launch import exit_like, replay\nfrom detrun.runner import Target\n"
            f"exit_like(replay('trace.zst', Target({BACKEND_FLAGS!r}), quiet=True, pin_threads=False))\n")
    replayed = run([sys.executable, "-c", code], cwd=directory, env={"OMP_NUM_THREADS": "1"})
    line = verdict(replayed.stderr)
    assert line.startswith("detrun: DIVERGED"), line
    assert "likely cause: torch intra-op threads: recorded 2, now 1" in line


# ------------------------------------------------------------------------------ the hooks, in-process


class FakeSession:
    """The part of Session the backends source uses, with everything kept in lists."""

    def __init__(self, recording: bool, recorded: dict[str, list[Any]] | None = None) -> None:
        self.recording = recording
        self.clock = StepClock(self.hook_failed)
        self.settings: dict[str, Any] = {}
        self.events: list[tuple[str, Any]] = []
        self.causes: list[str] = []
        self.divergences: list[str] = []
        self.failures: list[str] = []
        self.stops: list[Any] = []
        self.trace = types.SimpleNamespace(complete=True)
        self._recorded = recorded or {}
        self._cursors: dict[str, int] = {}

    @property
    def steps(self) -> int:
        return self.clock.step

    def when_imported(self, name: str, callback: Any) -> None:
        callback(sys.modules[name])

    def on_stop(self, callback: Any) -> None:
        self.stops.append(callback)

    def emit(self, kind: str, payload: Any) -> None:
        self.events.append((kind, payload))

    def recorded(self, kind: str) -> list[Any]:
        return self._recorded.get(kind, [])

    def take(self, kind: str) -> Any:
        index = self._cursors.get(kind, 0)
        if index >= len(self.recorded(kind)):
            return MISSING
        self._cursors[kind] = index + 1
        return self.recorded(kind)[index]

    def note_cause(self, cause: str, likely: bool = False) -> None:
        self.causes.insert(0, cause) if likely else self.causes.append(cause)

    def diverge(self, kind: str, message: str, step: int | None = None) -> None:
        self.divergences.append(message)

    def mismatch(self, kind: str, message: str, step: int | None = None) -> None:
        # An event the recording does not match: a cause beside the verdict, kept with the divergences here.
        self.divergences.append(message)

    def hook_failed(self, where: str, exc: BaseException) -> None:
        self.failures.append(f"{where}: {exc}")

    def of(self, kind: str) -> list[Any]:
        return [payload for k, payload in self.events if k == kind]


@pytest.fixture
def torch_flags() -> Any:
    """Import torch and put every flag (and the thread count) back afterwards."""
    torch = pytest.importorskip("torch")
    from detrun.env.torch_facts import flag_table, snapshot

    flags = flag_table(torch)
    before, threads = snapshot(flags), torch.get_num_threads()
    yield torch
    for flag in flags:
        if flag.set is not None and not flag.derived and flag.name in before:
            try:
                flag.set(before[flag.name], before)
            except Exception:  # noqa: BLE001
                pass
    torch.set_num_threads(threads)


def test_hooks_record_every_spelling_and_uninstall_restores(torch_flags: Any) -> None:
    from detrun.engine.sources.backend_flags import BackendsSource

    torch = torch_flags
    original_setter = torch._C._set_cudnn_benchmark
    prop = type(torch.backends.cudnn).__dict__["benchmark"]
    session = FakeSession(recording=True)
    source = BackendsSource()
    source.install(session)
    try:
        assert prop.setter is not original_setter  # the module property was hooked too
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.benchmark = True  # no change, no event
        session.clock.step = 3
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cuda.enable_flash_sdp(False)
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.raises(RuntimeError):
            torch.set_float32_matmul_precision(5)  # torch's own error, unchanged
        with torch.backends.cudnn.flags(enabled=False):
            pass
    finally:
        source.uninstall()
    assert torch._C._set_cudnn_benchmark is original_setter and prop.setter is original_setter
    changes = session.of("backends.set")
    assert changes[0][0] == 0 and changes[0][2] == "torch.backends.cudnn.benchmark"
    assert changes[0][1].startswith("test_backends.py:")  # the caller's line, not torch's
    assert changes[0][3] == {"cudnn.benchmark": True}
    assert changes[1][0] == 3 and changes[1][2] == "torch.backends.cuda.matmul.fp32_precision"
    assert changes[1][3]["cuda.matmul.fp32_precision"] == "tf32"
    assert changes[2][2:] == ["torch.backends.cuda.enable_flash_sdp", {"cuda.flash_sdp": False}]
    assert changes[3][3] == {"deterministic_algorithms": True, "deterministic_algorithms.warn_only": True}
    entering = next(i for i, c in enumerate(changes) if c[3].get("cudnn.enabled") is False)
    assert any(c[3].get("cudnn.enabled") is True for c in changes[entering + 1:])  # leaving flags()
    assert session.of("threads.set") == []  # thread counts are the threads source's
    assert session.failures == []


def test_thread_count_calls_are_recorded_with_their_step_and_uninstall_restores(torch_flags: Any) -> None:
    from detrun.engine.sources.thread_counts import ThreadsSource

    torch = torch_flags
    original = torch.set_num_threads
    start = [torch.get_num_threads(), torch.get_num_interop_threads()]
    session = FakeSession(recording=True)
    source = ThreadsSource()
    source.install(session)
    try:
        assert torch.set_num_threads is not original
        session.clock.step = 3
        torch.set_num_threads(1)
    finally:
        source.uninstall()
    assert torch.set_num_threads is original
    assert session.of("threads") == [start]
    threads = session.of("threads.set")
    assert len(threads) == 1 and threads[0][0] == 3 and threads[0][1].startswith("test_backends.py:")
    assert threads[0][2:] == ["torch.set_num_threads", [1, start[1]]]
    assert session.failures == []


def test_replay_names_thread_counts_set_at_another_step_or_never(torch_flags: Any) -> None:
    from detrun.engine.sources.thread_counts import ThreadsSource

    torch = torch_flags
    start = [torch.get_num_threads(), torch.get_num_interop_threads()]
    fewer = 1 if start[0] != 1 else 2
    recorded = {"threads": [start], "threads.set": [[2, "train.py:7", "torch.set_num_threads", [fewer, start[1]]]]}

    # The same call one step early: named as the likely cause, and nothing else.
    early = FakeSession(recording=False, recorded=recorded)
    source = ThreadsSource()
    source.install(early)
    try:
        early.clock.step = 1
        torch.set_num_threads(fewer)
        early.clock.tick()
        early.clock.tick()
        for stop in early.stops:
            stop()
    finally:
        source.uninstall()
        torch.set_num_threads(start[0])
    assert early.causes == ["torch threads set after step 1 (test_backends.py:%d), the recording set them after "
                            "step 2 (train.py:7)" % _line_of("torch.set_num_threads(fewer)")], early.causes

    # Never made: once step 2 is over the counts differ from the recording's, and that is named.
    never = FakeSession(recording=False, recorded=recorded)
    source = ThreadsSource()
    source.install(never)
    try:
        never.clock.tick()
        never.clock.tick()
        assert never.causes == []
        never.clock.tick()
    finally:
        source.uninstall()
    assert never.causes == [f"torch intra-op threads: recorded {fewer}, now {start[0]} (the recording set them with "
                            "torch.set_num_threads at train.py:7 after step 2; the replay did not)"]
    assert early.failures == never.failures == [] and never._cursors["threads.set"] == 1


def _line_of(text: str) -> int:
    """Return the line of this file that holds `text`."""
    return next(i for i, line in enumerate(Path(__file__).read_text().splitlines(), 1) if text in line)


def test_replay_pins_flags_and_reports_changes_at_other_steps(torch_flags: Any) -> None:
    from detrun.engine.sources.backend_flags import BackendsSource

    torch = torch_flags
    recorder = FakeSession(recording=True)
    source = BackendsSource()
    source.install(recorder)
    try:
        recorder.clock.step = 2
        torch.backends.cudnn.benchmark = True
    finally:
        source.uninstall()
    recorded = {kind: recorder.of(kind) for kind in ("backends", "backends.set", "env.torch")}
    torch._C._set_cudnn_benchmark(False)

    # The same change at the same step: nothing to report.
    same = FakeSession(recording=False, recorded=recorded)
    source = BackendsSource()
    source.install(same)
    try:
        same.clock.step = 2
        torch.backends.cudnn.benchmark = True
    finally:
        source.uninstall()
    assert same.divergences == [] and same.failures == []
    torch._C._set_cudnn_benchmark(False)

    # One step early: a divergence, and the flag is put back until the recorded step is over.
    early = FakeSession(recording=False, recorded=recorded)
    source = BackendsSource()
    source.install(early)
    try:
        early.clock.step = 1
        torch.backends.cudnn.benchmark = True
        assert torch.backends.cudnn.benchmark is False
        early.clock.tick()  # end of step 1
        early.clock.tick()  # end of step 2: the recorded change applies now
        assert torch.backends.cudnn.benchmark is True
    finally:
        source.uninstall()
    assert len(early.divergences) == 1 and "after step 1" in early.divergences[0], early.divergences
    assert early.causes[0] == "torch.backends.cudnn.benchmark = True made after step 1 instead of after step 2"


def test_replay_pins_the_recorded_start_values(torch_flags: Any) -> None:
    from detrun.engine.sources.backend_flags import BackendsSource

    torch = torch_flags
    recorder = FakeSession(recording=True)
    source = BackendsSource()
    source.install(recorder)
    source.uninstall()
    start = dict(recorder.of("backends")[0])
    start["float32_matmul_precision"] = "high"  # as if the recording's torch started with TF32 on
    start["cudnn.deterministic"] = True
    replay = FakeSession(recording=False, recorded={"backends": [start]})
    source = BackendsSource()
    source.install(replay)
    source.uninstall()
    assert torch.get_float32_matmul_precision() == "high"
    assert torch.backends.cudnn.deterministic is True
    assert replay.causes == [] and replay.divergences == []


def test_a_failing_hook_never_changes_the_program(torch_flags: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from detrun.engine.sources import backend_flags as backends

    torch = torch_flags
    session = FakeSession(recording=True)
    source = backends.BackendsSource()
    source.install(session)
    try:
        def broken(flags: Any) -> Any:
            raise ValueError("boom")

        monkeypatch.setattr(backends, "snapshot", broken)
        torch.backends.cudnn.benchmark = True
        assert torch.backends.cudnn.benchmark is True
    finally:
        monkeypatch.undo()
        source.uninstall()
    assert session.failures and "boom" in session.failures[0]


# ------------------------------------------------------------------------------ kernel sequences


def _event(name: str, device: str, id_: int, linked: int = 0) -> Any:
    return types.SimpleNamespace(name=name, device_type=device, id=id_, linked_correlation_id=linked)


def test_kernel_launches_are_ordered_and_attributed() -> None:
    events = [_event("cudaLaunchKernel", "CPU", 10, 11), _event("aten::mm", "CPU", 10), _event("aten::add_", "CPU", 11),
              _event("add_kernel", "CUDA", 101, 11), _event("Memcpy HtoD", "CUDA", 99, 10),
              _event("gemm", "CUDA", 100, 10), _event("orphan", "CUDA", 102, 77)]
    assert kernel_launches(events, "CPU", "CUDA") == [("gemm", "aten::mm"), ("add_kernel", "aten::add_"),
                                                      ("orphan", "an unknown op")]


def test_kernel_launches_skip_the_profilers_own_events() -> None:
    # On an H200 (torch 2.11) Kineto's "Activity Buffer Request" came first with the op's id.
    events = [_event("Activity Buffer Request", "CPU", 10), _event("aten::mm", "CPU", 10),
              _event("gemm", "CUDA", 100, 10)]
    assert kernel_launches(events, "CPU", "CUDA") == [("gemm", "aten::mm")]


class FakeProfiler:
    """Stands in for torch.profiler.profile: hands out preset events when stopped."""

    def __init__(self, events: list[Any]) -> None:
        self._events = events
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def events(self) -> list[Any]:
        return self._events


class FakeCapture(KernelSequence):
    """A KernelSequence whose profiler is a stand-in (no CUDA here)."""

    def __init__(self, per_step: list[list[Any]]) -> None:
        super().__init__()
        self.per_step = list(per_step)

    def _new_profiler(self) -> Any:
        return FakeProfiler(self.per_step.pop(0))


def _fake_torch(cuda_build: str | None = "12.8") -> Any:
    lazy: list[Any] = []
    profiler_module = types.SimpleNamespace(_prepare_profiler=lambda *a: "prepared", _enable_profiler=lambda *a: None)
    torch = types.SimpleNamespace(
        version=types.SimpleNamespace(cuda=cuda_build),
        cuda=types.SimpleNamespace(device_count=lambda: 1, _lazy_call=lazy.append, is_initialized=lambda: bool(lazy),
                                   synchronize=lambda: None),
        autograd=types.SimpleNamespace(profiler=profiler_module, _profiler_enabled=lambda: False,
                                       DeviceType=types.SimpleNamespace(CPU="CPU", CUDA="CUDA")))
    return torch, lazy


def _capture(session: FakeSession, per_step: list[list[Any]], cuda_build: str | None = "12.8") -> FakeCapture:
    torch, lazy = _fake_torch(cuda_build)
    capture = FakeCapture(per_step)
    session.settings["kernel_steps"] = 2
    session.when_imported = lambda name, callback: callback(torch)  # type: ignore[method-assign]
    capture.install(session)
    for call in lazy:
        call()  # CUDA initialises: the first window opens
    for _ in range(3):
        session.clock.tick()
    for stop in session.stops:
        stop()
    return capture


def test_kernel_capture_records_and_compares_with_a_stand_in_profiler() -> None:
    step1 = [_event("aten::conv2d", "CPU", 1), _event("sm90_fprop_tf32", "CUDA", 5, 1)]
    step2 = [_event("aten::mm", "CPU", 2), _event("gemm_tf32", "CUDA", 6, 2)]
    recorder = FakeSession(recording=True)
    _capture(recorder, [step1, step2])
    payloads = recorder.of(kernels.KIND)
    assert [(s.step, s.kernels, s.ops) for s in decode_steps(payloads)] == [
        (1, ["sm90_fprop_tf32"], ["aten::conv2d"]), (2, ["gemm_tf32"], ["aten::mm"])]

    same = FakeSession(recording=False, recorded={kernels.KIND: payloads})
    _capture(same, [step1, step2])
    assert same.divergences == [] and same._cursors[kernels.KIND] == 2

    other = [_event("aten::conv2d", "CPU", 1), _event("sm90_fprop_f32", "CUDA", 5, 1)]
    diverged = FakeSession(recording=False, recorded={kernels.KIND: payloads})
    _capture(diverged, [other, step2])
    assert diverged.divergences == ["CUDA kernel #1 of step 1 is 'sm90_fprop_f32' (launched by aten::conv2d), but "
                                    "the recording has 'sm90_fprop_tf32' (launched by aten::conv2d)"]


def test_kernel_capture_is_a_no_op_without_cuda_and_yields_to_a_user_profiler() -> None:
    cpu = FakeSession(recording=True)
    capture = _capture(cpu, [], cuda_build=None)
    assert cpu.events == [] and not capture._subscribed

    # Replaying a GPU trace where there is no CUDA: said once, and the events are accounted for.
    payloads = [encode_step(StringTable(), 1, [("gemm", "aten::mm")])]
    replay = FakeSession(recording=False, recorded={kernels.KIND: payloads})
    _capture(replay, [], cuda_build=None)
    assert replay.divergences == ["the recording launched CUDA kernels in step(s) 1, but this replay used no CUDA "
                                  "device"]

    torch, lazy = _fake_torch()
    session = FakeSession(recording=True)
    session.settings["kernel_steps"] = 1
    session.when_imported = lambda name, callback: callback(torch)  # type: ignore[method-assign]
    capture = FakeCapture([[]])
    capture.install(session)
    lazy[0]()
    assert torch.autograd.profiler._prepare_profiler() == "prepared"  # the script's own profiler starts
    session.clock.tick()
    capture.uninstall()
    assert session.of(kernels.KIND) == [{"step": 1, "skipped": "the script started its own profiler"}]
