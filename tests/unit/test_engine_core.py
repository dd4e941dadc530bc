"""Fast in-process tests of the engine's contracts: the step clock, the session cursors, the Patcher, the trace."""
from __future__ import annotations

import types
from pathlib import Path

import pytest

from detrun.engine.patcher import NOTSET, Patcher
from detrun.engine.session import MISSING, Session
from detrun.engine.step_clock import PHASES, StepClock, Tick
from detrun.errors import TraceError
from detrun.trace import TraceWriter, read_trace
from detrun.trace.salvage import salvage


# ------------------------------------------------------------------ the step clock


def test_clock_calls_phases_in_declared_order_whatever_the_subscription_order() -> None:
    calls: list[tuple[str, int]] = []
    clock = StepClock(lambda where, exc: None)
    for phase in reversed(PHASES):
        clock.subscribe(phase, lambda tick, p=phase: calls.append((p, tick.step)), phase)
    clock.tick()
    clock.tick()
    assert calls == [(p, 1) for p in PHASES] + [(p, 2) for p in PHASES]


def test_clock_reports_a_failing_subscriber_and_runs_the_rest() -> None:
    errors: list[str] = []
    seen: list[int] = []
    housekeeping: list[int] = []
    clock = StepClock(lambda where, exc: errors.append(f"{where}: {exc}"), after_tick=lambda: housekeeping.append(1))

    def broken(tick: Tick) -> None:
        raise ValueError("bug")

    clock.subscribe("flags", broken, "the broken hook")
    clock.subscribe("digests", lambda tick: seen.append(tick.step), "digests")
    tick = clock.tick(optimizer="opt", framework="tensorflow")
    assert (tick.step, tick.optimizer, tick.framework) == (1, "opt", "tensorflow")
    assert errors == ["the broken hook: bug"] and seen == [1] and housekeeping == [1]


def test_clock_lets_a_deliberate_stop_through_and_unsubscribe_works() -> None:
    clock = StepClock(lambda where, exc: None)

    def stop(tick: Tick) -> None:
        raise SystemExit(0)

    clock.subscribe("profiler", stop, "limit")
    with pytest.raises(SystemExit):
        clock.tick()
    clock.unsubscribe(stop)
    assert clock.tick().step == 2
    with pytest.raises(ValueError):
        clock.subscribe("nonsense", stop, "x")


def test_clock_is_the_only_optimizer_hook_and_detaches() -> None:
    torch = pytest.importorskip("torch")
    from torch.optim.optimizer import _global_optimizer_post_hooks

    before = len(_global_optimizer_post_hooks)
    clock = StepClock(lambda where, exc: None)
    clock.attach_torch(torch)
    clock.attach_torch(torch)  # idempotent
    assert len(_global_optimizer_post_hooks) == before + 1
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([param], lr=0.1)
    param.sum().backward()
    optimizer.step()
    assert clock.step == 1
    clock.detach_torch()
    assert len(_global_optimizer_post_hooks) == before


def test_clock_unsubscribes_a_bound_method_and_sees_a_torch_step_s_backward() -> None:
    torch = pytest.importorskip("torch")
    original_backward = torch.autograd.backward

    class Watcher:
        def __init__(self) -> None:
            self.ticks: list[int] = []
            self.losses: list[float] = []
            self.after = 0

        def on_tick(self, tick: Tick) -> None:
            self.ticks.append(tick.step)
            self.losses.append(float(clock.loss.item()))  # type: ignore[union-attr]

        def before(self, tensors: object) -> None:
            assert tensors is clock.loss

        def count(self) -> None:
            self.after += 1

    watcher = Watcher()
    clock = StepClock(lambda where, exc: None)
    # A bound method is a new object at each access: unsubscribing with another one must still work.
    clock.subscribe("digests", watcher.on_tick, "watcher", framework="torch")
    clock.on_backward("watcher", before=watcher.before, after=watcher.count)
    clock.attach_torch(torch)
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([param], lr=0.1)
    for _ in range(2):
        param.sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert watcher.ticks == [1, 2] and watcher.losses == pytest.approx([2.0, 1.8]) and watcher.after == 2
    assert clock.backward_calls == 2 and clock.loss is None  # a tick ends the loss's life
    clock.tick(framework="tensorflow")  # a TensorFlow step does not call a torch-only subscriber
    assert watcher.ticks == [1, 2]
    clock.unsubscribe(watcher.on_tick)
    clock.off_backward(watcher.count)
    param.sum().backward()
    optimizer.step()
    assert watcher.ticks == [1, 2] and watcher.after == 2
    clock.detach_torch()
    assert torch.autograd.backward is original_backward


# ------------------------------------------------------------------ the Patcher


def test_patcher_restores_in_reverse_order_and_deletes_what_did_not_exist() -> None:
    class Base:
        inherited = "base"

    class Child(Base):
        pass

    target = types.SimpleNamespace(value=1)
    patcher = Patcher()
    assert patcher.setattr(target, "value", 2) == 1
    assert patcher.setattr(target, "value", 3) == 2
    assert patcher.setattr(target, "new", 4) is NOTSET
    assert patcher.setattr(Child, "inherited", "patched") is NOTSET  # read from the class's own __dict__
    assert patcher.active
    patcher.undo()
    assert target.value == 1 and not hasattr(target, "new")
    assert "inherited" not in Child.__dict__ and Child.inherited == "base"
    patcher.undo()  # a second undo is a no-op
    assert not patcher.active


# ------------------------------------------------------------------ the trace round trip


def _write(path: Path, events: list[tuple[str, object]], end: dict[str, object] | None) -> None:
    writer = TraceWriter(str(path), {"script": {"name": "t.py"}, "settings": {}})
    for kind, payload in events:
        writer.event(kind, payload)
    writer.close(end)


def test_trace_round_trip_keeps_every_value_and_order(tmp_path: Path) -> None:
    path = tmp_path / "t.zst"
    events: list[tuple[str, object]] = [("py.seed", ["a.py:1", 2**70]), ("step", [0, 1.5, 123, b"\x01"]),
                                        ("py.seed", ["a.py:2", -(2**80)]), ("step", [0, None, None, b""])]
    _write(path, events, {"complete": True, "exit_status": 0, "steps": 2})
    trace = read_trace(str(path))
    assert trace.complete and trace.header["script"] == {"name": "t.py"}
    assert trace.of("py.seed") == [["a.py:1", 2**70], ["a.py:2", -(2**80)]]
    assert list(trace.of("step")) == [[0, 1.5, 123, b"\x01"], [0, None, None, b""]]  # kept from the first pass
    assert trace.end is not None and trace.end["counts"] == {"py.seed": 2, "step": 2}


def test_a_replay_cursor_that_peeks_then_takes_decodes_each_step_once(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from detrun.trace import reader
    from detrun.trace.reader import StreamedEvents

    path = tmp_path / "t.zst"
    _write(path, [("step", [0, float(i), i, b"\x01"]) for i in range(200)], {"complete": True, "steps": 200})
    monkeypatch.setattr(reader, "MAX_HELD_STEP_EVENTS", 199)  # one more than kept: a long run's, streamed
    steps = read_trace(str(path)).of("step")
    assert isinstance(steps, StreamedEvents)
    walks = []
    original_iter = StreamedEvents.__iter__
    monkeypatch.setattr(StreamedEvents, "__iter__", lambda self: (walks.append(1), original_iter(self))[1])
    for i in range(200):  # what the step check does: peek (digest now?), then take
        assert steps[i][2] == i and steps[i][2] == i
        if i >= 63:  # batched device steps: taken up to 64 events behind the peeks
            assert steps[i - 63][2] == i - 63
    assert len(walks) == 1  # one pass over the file, not one per step


def test_a_short_run_s_steps_are_kept_from_the_first_pass_and_a_long_run_s_streamed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from detrun.trace import reader
    from detrun.trace.reader import StreamedEvents

    path = tmp_path / "t.zst"
    steps = [[0, float(i), i, b"\x01"] for i in range(10)]
    _write(path, [("step", step) for step in steps], {"complete": True, "steps": 10})
    monkeypatch.setattr(reader, "MAX_HELD_STEP_EVENTS", 10)
    kept = read_trace(str(path)).of("step")
    assert type(kept) is list and kept == steps
    monkeypatch.setattr(reader, "MAX_HELD_STEP_EVENTS", 9)
    streamed = read_trace(str(path)).of("step")
    assert isinstance(streamed, StreamedEvents) and list(streamed) == steps and len(streamed) == 10


def test_trace_without_end_record_is_refused_and_salvage_marks_it_incomplete(tmp_path: Path) -> None:
    partial = tmp_path / "t.partial"
    writer = TraceWriter(str(partial), {"script": {}, "settings": {}})
    writer.event("step", [0, 1.0, 1, b""])
    writer.flush()  # what a killed run leaves: flushed chunks, no end record
    with pytest.raises(TraceError, match="truncated"):
        read_trace(str(partial))
    assert salvage(str(partial), str(tmp_path / "t.zst"), "killed by SIGKILL", -9) == 1
    trace = read_trace(str(tmp_path / "t.zst"))
    assert not trace.complete and trace.end is not None and trace.end["reason"] == "killed by SIGKILL"


# ------------------------------------------------------------------ session cursors


def _replay_session(tmp_path: Path, events: list[tuple[str, object]]) -> Session:
    path = tmp_path / "r.zst"
    _write(path, events, {"complete": True, "exit_status": 0, "steps": 0})
    return Session("replay", trace=read_trace(str(path)), quiet=True)


def test_session_cursors_feed_back_in_order_per_kind(tmp_path: Path) -> None:
    session = _replay_session(tmp_path, [("py.seed", ["a:1", 1]), ("fs.listing", ["b:1", ["x"]]),
                                         ("py.seed", ["a:2", 2])])
    assert session.take("py.seed") == ["a:1", 1] and session.take("fs.listing") == ["b:1", ["x"]]
    assert session.take("py.seed") == ["a:2", 2]
    assert session.take("py.seed") is MISSING and session.take("np.seed") is MISSING
    assert session.divergences == [] and session.mismatches == []


def test_exchange_records_or_feeds_back_and_names_a_moved_call(tmp_path: Path) -> None:
    site = "test_engine_core.py"
    session = _replay_session(tmp_path, [("py.seed", ["elsewhere.py:3", 42])])
    assert session.exchange("py.seed", 7, "random.seed()") == 42  # the recorded value wins
    # A moved call is an event mismatch (a likely cause), not a divergence of the state.
    assert session.divergences == [] and len(session.mismatches) == 1
    assert "elsewhere.py:3" in session.mismatches[0].message and site in session.mismatches[0].message
    assert session.exchange("py.seed", 9, "random.seed()") == 9  # nothing recorded: the program's own value
