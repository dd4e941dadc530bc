"""Per-step digests: the parameters after every optimizer step and the loss `backward()` ran on.

One event per optimizer step: `[optimizer_index, loss, digest, lanes]`.
- `loss` is the float value of the tensor backward() was called on (exact: f32/f16/bf16 widen to
  f64 without rounding), or None for a non-scalar;
- `digest` is a 32-bit digest over all of the optimizer's parameters, or None on steps the
  recording did not digest (engine/digest_cadence.py: every N, or auto); a replay digests exactly
  the steps its recording did, and with `digest_last_step` both digest the parameters after the
  last step at the end (the trace end's `final_digest`);
- `lanes` holds two bytes per parameter, the 16-bit fold of its 64-bit word sum (parameters beyond
  LANES fold onto lane i % LANES), so a divergence is attributed to a parameter by name for about
  two bytes per parameter and digested step. Version 1 of the event held one byte, the sum's low
  byte: blind to a change in the upper words of a float32 pair, and fooled 1 time in 256; a replay
  of such a trace computes its lanes that way to compare them.

A parameter's digest is the wrapping sum of its bytes read as 64-bit words (32- or 16-bit words
when its size is not a multiple of 8), mod 2**64: exact integer arithmetic, so any single changed
bit changes it, and a vectorised pass over memory without copies (crc32 costs 6x more on CPU).
CPU parameters are summed through cached numpy views of their storage. CUDA parameters are summed
on the device with the same arithmetic, and the results are copied to the host in batches, so a
step never waits for the GPU. Host and device steps alike are written, or checked, a batch at a
time: every `SYNC_EVERY` steps, about once a second, and at the end of the run (under `--strict`,
a host step is checked at once). A divergence still names its own step; a replay stops at most a
batch later. The 64-bit sums are folded into the event's 32-bit digest.
"""
from __future__ import annotations

import struct
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from detrun.engine.digest_cadence import DigestCadence
from detrun.engine.digests import MASK64 as _MASK64, device_word_sum, fold, local_shard, word_view
from detrun.engine.parameter_names import ModuleRegistry, parameter_names
from detrun.engine.session import MISSING, float_bits
from detrun.engine.step_clock import Tick
from detrun.trace.registry import (  # the kinds, their payload schemas and versions
    BACKWARD_LOSS as BACKWARD_KIND,
    STEP as KIND,
    STEP_NAMES as NAMES_KIND,
    step_lane_bytes,
)

if TYPE_CHECKING:
    from detrun.engine.session import Session

LANES = 16
SYNC_EVERY = 64


class _OptimizerSteps:
    """What the verifier keeps of one optimizer: its index in the trace and its parameters, refreshed at digests."""

    __slots__ = ("index", "names", "params", "views", "on_device", "count", "next_digest")

    def __init__(self, index: int) -> None:
        self.index = index
        self.names: list[str] | None = None  # None until the first refresh
        self.params: list[Any] = []
        # Per parameter, aligned with `params`: (data pointer, numpy word view) of a plain contiguous
        # CPU tensor, or None (rebuilt, or summed the general way, at the next digest).
        self.views: list[tuple[int, Any] | None] = []
        self.on_device = False
        self.count = 0  # its steps so far (recording)
        self.next_digest = 1  # the count at which the recording digests it next (digest_cadence)


class StepVerifier:
    """Record or check the loss at every optimizer step and the parameters' digest at the chosen steps.

    A step's loss and digest are taken at the step; writing (or checking) its event waits for a
    batch of SYNC_EVERY steps, or about a second (Session.on_flush), or the end of the run. The
    work left at the step itself is a few attribute reads: after the step's own arithmetic has
    pushed the interpreter out of the CPU's caches, each Python call there costs microseconds.
    """

    def __init__(self) -> None:
        self._session: Session | None = None
        self._handle: Any = None
        self._backward_calls = 0
        self._optimizers: dict[int, _OptimizerSteps] = {}  # by id(): the verifier must not keep one alive
        # The optimizer of the latest step, held until the next one (or the end): most steps are made
        # by the same one, and id() is costly while audit hooks are installed (each call raises an event).
        self._latest: tuple[Any, _OptimizerSteps] | None = None
        self._next_index = 0
        self._before_first_step = True
        # (optimizer index, loss, per-parameter sums (ints, or a device tensor) or None, step, names, on device)
        self._pending: list[tuple[int, Any, Any, int, list[str], bool]] = []
        self._lock = threading.RLock()  # the pending batch and the replay cursor it is checked against
        self._cadence = DigestCadence(1)
        # Replay: the steps taken so far, and whether the recording digested at each of a window of
        # recorded steps from `_window_start` on (read ahead, so that a step reads one list item).
        self._replayed_steps = 0
        self._window: list[bool] = []
        self._window_start = 0
        self._recording = True
        self._check_at_once = False  # --strict: a host step is checked at the step, to stop right there
        self._digest_last_step = False
        self._last_step: tuple[int, _OptimizerSteps, bool] | None = None  # (step, optimizer, digested) of the latest
        self._last_digested_step: int | None = None  # for the message of a loss that differs between digests
        self._torch: Any = None
        self._add_reduce: Any = None
        self._uint64: Any = None
        self._registry = ModuleRegistry()  # parameter names without a scan of every object

    # ------------------------------------------------------------ install / uninstall

    def install(self, session: Session) -> None:
        if self._session is not None:
            return
        self._session = session
        self._recording = session.recording
        self._check_at_once = bool(session.strict) and not session.recording
        self._cadence = DigestCadence(max(0, int(session.settings.get("digest_every", 1))))
        # Traces from before the last-step digest end with the last digested step's digest.
        self._digest_last_step = bool(session.settings.get("digest_last_step", False))
        session.when_imported("torch", self._hook)
        session.on_flush(self.flush)
        session.on_stop(self._finish)

    def _hook(self, torch: Any) -> None:
        if self._session is None or self._handle is not None:
            return
        self._torch = torch
        import numpy  # torch has imported it already

        # Bound once: np.add.reduce skips ndarray.sum's Python wrapper on the per-step path.
        self._add_reduce = numpy.add.reduce
        self._uint64 = numpy.uint64
        self._session.clock.subscribe("digests", self._on_tick, "the optimizer step digest", framework="torch")
        self._registry.install(torch, self._session.hook_failed)
        self._handle = self._on_tick
        # Until the first optimizer step: the losses of backward() calls that no step follows.
        self._session.clock.on_backward("the backward() loss check", before=self._check_backward_loss)

    def uninstall(self) -> None:
        self._latest = None
        if self._handle is not None and self._session is not None:
            self._session.clock.unsubscribe(self._on_tick)
            self._session.clock.off_backward(self._check_backward_loss)
        self._handle = None
        self._registry.uninstall()
        self._session = None

    # ------------------------------------------------------------ backward() before any optimizer step

    def _check_backward_loss(self, loss: Any) -> None:
        """Record or compare the loss of a backward() that no optimizer step has followed yet.

        Training without torch.optim (`w -= lr * w.grad`) makes no optimizer steps, so its losses
        are its per-step state check: the loss at call k depends on every weight after call k - 1.
        """
        session = self._session
        if session is None or session.steps > 0:
            return
        value = _host_loss(loss)
        self._backward_calls += 1
        if session.recording:
            session.emit(BACKWARD_KIND, value)
            return
        recorded = session.take(BACKWARD_KIND)
        if recorded is MISSING:
            # None recorded at all: a trace from a detrun without this check (the steps still are).
            if session.trace.complete and len(session.recorded(BACKWARD_KIND)) > 0:
                session.diverge(BACKWARD_KIND, f"backward() call #{self._backward_calls} is beyond the "
                                               f"{len(session.recorded(BACKWARD_KIND))} the recording made")
            return
        session.count_check("losses")
        if not _same_float(recorded, value):
            session.diverge(BACKWARD_KIND, f"the loss of backward() call #{self._backward_calls} differs: recorded "
                                           f"{float_bits(recorded)}, got {float_bits(value)}")

    # ------------------------------------------------------------ the step hook

    def _on_tick(self, tick: Tick) -> None:
        """Take the loss, and the digest if due, of the optimizer that just stepped (the clock reports failures)."""
        session = self._session
        if session is None:
            return
        optimizer = tick.optimizer
        latest = self._latest
        state = latest[1] if latest is not None and latest[0] is optimizer else self._state_of(optimizer)
        loss = session.clock.loss  # what backward() ran on since the last step, or None
        # Held for the whole step: a divergence found on another thread (a stdout line) flushes
        # the batch first (Session.diverge), and must see each step either pending or checked.
        with self._lock:
            pending = self._pending
            if self._recording:
                state.count += 1
                digest_now = state.count >= state.next_digest
            else:
                offset = self._replayed_steps - self._window_start
                self._replayed_steps += 1
                window = self._window
                digest_now = window[offset] if offset < len(window) else self._read_window()
            step = tick.step
            self._last_step = (step, state, digest_now)
            if digest_now:
                sums = self._digest(optimizer, state, step)
            else:
                sums = None
                if state.names is None:  # a first step without a digest (a replayed trace can say so)
                    self._refresh(optimizer, state)
            if state.on_device:
                pending.append((state.index, _device_loss(self._torch, loss), sums, step, state.names or [], True))
            else:
                # _host_loss(), inline: one call fewer at every step.
                try:
                    value = None if loss is None else float(loss.item())
                except Exception:  # noqa: BLE001 - item() refuses more than one element; a tuple has no item()
                    value = None
                pending.append((state.index, value, sums, step, state.names or [], False))
                if self._check_at_once:
                    self.flush()
                    return
            if len(pending) >= SYNC_EVERY:
                self.flush()

    def _state_of(self, optimizer: Any) -> _OptimizerSteps:
        """Return what is kept of an optimizer other than the latest one (made at its first step)."""
        if self._before_first_step:
            self._before_first_step = False
            self._session.clock.off_backward(self._check_backward_loss)
        key = id(optimizer)
        state = self._optimizers.get(key)
        if state is None:
            state = self._optimizers[key] = _OptimizerSteps(self._next_index)
            self._next_index += 1
            # Forget it when it is freed: a later optimizer at the same address is another one,
            # in the recording and the replay alike, whatever the allocator does.
            try:
                weakref.finalize(optimizer, self._optimizers.pop, key, None)
            except TypeError:  # not weakly referable: kept under its id to the end
                pass
        self._latest = (optimizer, state)
        return state

    def _read_window(self) -> bool:
        """Read ahead whether the recording digested at this step and the next ones (replay); return this step's."""
        # In one go, not at each step: a batch of steps (one under --strict).
        position = self._replayed_steps - 1  # this step's event: every step takes one, in order
        size = 1 if self._check_at_once else SYNC_EVERY
        self._window = [payload[2] is not None for payload in self._session.recorded_range(KIND, position, size)]
        self._window_start = position
        return bool(self._window) and self._window[0]  # none left: beyond the recording's steps

    def _digest(self, optimizer: Any, state: _OptimizerSteps, step: int) -> Any:
        """Return the optimizer's per-parameter sums: ints on the host, or one tensor on the device."""
        started = time.perf_counter()
        if self._refresh(optimizer, state):
            started = time.perf_counter()  # naming new parameters is not what each digest costs
        sums = self._sums(state)
        if self._recording:
            state.next_digest = self._cadence.digested(state.count, step, started, time.perf_counter())
        return sums

    def _sums(self, state: _OptimizerSteps) -> Any:
        """Return the word sums of the optimizer's parameters as last refreshed: ints, or one device tensor."""
        if state.on_device:
            torch = self._torch
            return torch.stack([device_word_sum(torch, p) for p in state.params])
        add_reduce, uint64, views = self._add_reduce, self._uint64, state.views
        sums = []
        for i, param in enumerate(state.params):
            cached = views[i]
            # `p.data = ...` swaps the storage: the pointer check notices, and the view is rebuilt.
            if cached is not None and param.data_ptr() == cached[0]:
                sums.append(int(add_reduce(cached[1], dtype=uint64)))
            else:
                sums.append(self._word_sum(param, views, i))
        return sums

    def _refresh(self, optimizer: Any, state: _OptimizerSteps) -> bool:
        """Take the optimizer's parameters as they are now; name them (an event) when they changed; return whether they did."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        # Every digest: `model.cuda()` moves a parameter without replacing the object.
        state.on_device = bool(params) and params[0].is_cuda
        old = state.params
        if state.names is not None and len(params) == len(old) and all(p is q for p, q in zip(params, old)):
            return False
        if state.names is None or len(params) != len(old):
            names = parameter_names(self._torch, optimizer, params, self._registry)
            if names != state.names:
                self.flush()  # the steps before the change go out under the names they had
                state.names = names
                self._names_event(state.index, names)
        state.params = params
        state.views = [None] * len(params)
        return True

    def _finish(self) -> None:
        """Write the batched steps, then digest the parameters after the last step if that step was not."""
        self._latest = None
        self.flush()
        session, last = self._session, self._last_step
        if session is None or last is None or last[2] or not self._digest_last_step:
            return
        state = last[1]
        sums = self._sums(state)
        per_param = [s & _MASK64 for s in sums.cpu().tolist()] if state.on_device else sums
        session.last_digest = fold(per_param)

    def _names_event(self, index: int, names: list[str]) -> None:
        """Record the optimizer's parameter names (`detrun diff` names lanes with them), or check them."""
        session = self._session
        if session.recording:
            session.emit(NAMES_KIND, [index, names])
            return
        recorded = session.take(NAMES_KIND)
        if recorded is MISSING:  # a trace from a detrun that did not record names
            return
        if list(recorded) != [index, names]:
            session.mismatch(NAMES_KIND, f"optimizer #{index}'s parameters are {_few(names)}, the recording's "
                                         f"(optimizer #{recorded[0]}) {_few(recorded[1])}")

    def flush(self) -> None:
        """Record or check the batched steps, in order (one device-to-host copy for the device ones)."""
        with self._lock:
            if self._pending and self._session is not None:
                self._check_pending()

    def _check_pending(self) -> None:
        """Write or check the pending steps (under the lock), a batch of events at once."""
        pending, self._pending = self._pending, []
        session = self._session
        device = [entry for entry in pending if entry[5]]
        host_sums: Any = iter(())
        host_losses: Any = iter(())
        if device:
            torch = self._torch
            sums = [s for _, _, s, _, _, _ in device if s is not None]
            losses = [l for _, l, _, _, _, _ in device if l is not None]
            host_sums = iter(torch.stack(sums).cpu().tolist()) if sums else iter(())
            host_losses = iter(torch.stack(losses).cpu().tolist()) if losses else iter(())
        payloads = []
        width = lane_width(session, KIND)
        for index, loss, sums, _step, _names, on_device in pending:
            if on_device:
                loss = next(host_losses) if loss is not None else None
                sums = [s & _MASK64 for s in next(host_sums)] if sums is not None else None
            payloads.append(step_payload(session, index, loss, sums, width))
        if session.recording:
            session.emit_all(KIND, payloads)
            return
        recorded = session.take_range(KIND, len(payloads))
        session.count_check("steps", len(recorded))
        for position, (payload, entry) in enumerate(zip(payloads, pending)):
            step = entry[3]
            check_step(session, KIND, recorded[position] if position < len(recorded) else MISSING, step, payload,
                       entry[4], last_digested=self._last_digested_step)
            if payload[2] is not None:
                self._last_digested_step = step

    # ------------------------------------------------------------ digests

    def _word_sum(self, param: Any, views: list[tuple[int, Any] | None], index: int) -> int:
        """Return the wrapping word sum of a CPU parameter; keep a zero-copy view of a plain one in `views[index]`."""
        local = local_shard(param)  # an FSDP2 parameter: this rank's shard, a new tensor at each call
        view = word_view(self._torch, local)
        if view is None:  # not contiguous: sum a fresh contiguous copy
            view = word_view(self._torch, local.contiguous())
        elif local is param:
            views[index] = (param.data_ptr(), view)
        return int(self._add_reduce(view, dtype=self._uint64))


def lane_width(session: Session, kind: str) -> int:
    """Return the bytes per lane of a step kind's events in this session (1 for a version-1 trace, else 2)."""
    return step_lane_bytes(session.event_version(kind))


def step_payload(session: Session, index: int, loss: float | None, per_param: list[int] | None,
                 width: int) -> list[Any]:
    """Return a step's event payload, [index, loss, digest, lanes], from the 64-bit word sums of its parameters, if digested.

    `width` is the bytes per lane (`lane_width`).
    """
    if per_param is None:
        return [index, loss, None, b""]
    digest = fold(per_param)
    folded = bytearray(min(len(per_param), LANES) * width)
    for i, value in enumerate(per_param):
        lane = (i % LANES) * width
        if width == 1:
            folded[lane] ^= value & 0xFF
        else:
            value &= _MASK64
            value ^= value >> 32
            value ^= value >> 16
            folded[lane] ^= value & 0xFF
            folded[lane + 1] ^= (value >> 8) & 0xFF
    session.last_digest = digest
    return [index, loss, digest, bytes(folded)]


def record_or_check_step(session: Session, kind: str, step: int, index: int, loss: float | None,
                         per_param: list[int] | None, names: list[str], noun: str = "parameter",
                         last_digested: int | None = None) -> None:
    """Write one step event, or compare it with the recorded one and report what differs.

    For verifiers that write a step at a time (TensorFlow's): `per_param` holds the 64-bit word sums
    of the parameters (None on steps between digests), `names` their names, `noun` what to call them,
    `last_digested` the latest earlier step whose parameters were digested.
    """
    payload = step_payload(session, index, loss, per_param, lane_width(session, kind))
    if session.recording:
        session.emit(kind, payload)
        return
    recorded = session.take(kind)
    if recorded is not MISSING:
        session.count_check("steps")
    check_step(session, kind, recorded, step, payload, names, noun, last_digested)


def check_step(session: Session, kind: str, recorded: Any, step: int, payload: list[Any], names: list[str],
               noun: str = "parameter", last_digested: int | None = None) -> None:
    """Compare a step's payload with the recorded one (MISSING: none left) and report what differs."""
    index, loss, digest, lanes = payload
    if recorded is MISSING:
        if session.trace.complete:
            session.diverge(kind, f"the replay made more training steps than the {len(session.recorded(kind))} "
                                  "recorded", step=step)
        return
    # The common case in one comparison; a loss of zero is compared by its bits below (-0.0 == 0.0).
    if recorded == payload and loss:
        return
    rec_index, rec_loss, rec_digest, rec_lanes = recorded
    problems, parts = [], []
    if rec_index != index:
        problems.append(f"optimizer #{index} stepped where the recording has optimizer #{rec_index}")
        parts.append("optimizer")
    if rec_digest is not None and digest is not None and rec_digest != digest:
        culprits = _attribute(rec_lanes, lanes, names, lane_width(session, kind)).replace("parameter", noun)
        problems.append(f"{culprits} (digest recorded {rec_digest:08x}, got {digest:08x})")
        parts.append("parameters")
    if not _same_float(rec_loss, loss):
        problems.append(f"loss recorded {float_bits(rec_loss)} got {float_bits(loss)}")
        parts.append("loss")
        if rec_digest is None and len(parts) == 1:
            # The honest bound of a cadence: the loss names the first step whose state differs, but
            # not which parameter; no digest of this step exists to compare with.
            last = f" (last digested at step {last_digested})" if last_digested is not None else ""
            problems.append(f"the {noun}s were not digested at this step{last}: record with --digest-every 1 "
                            f"to name the exact step and {noun}")
    if problems:
        session.diverge(kind, "; ".join(problems), step=step, parts=tuple(parts))


def _few(names: list[str]) -> str:
    return f"{len(names)} named " + ", ".join(f"'{n}'" for n in names[:4]) + (" …" if len(names) > 4 else "")


def _device_loss(torch: Any, loss: Any) -> Any:
    if loss is None or not hasattr(loss, "numel") or loss.numel() != 1:
        return None
    return loss.detach().reshape(()).to(torch.float64)


def _host_loss(loss: Any) -> float | None:
    """Return a one-element tensor's value, else None (no loss, a larger tensor, a sequence of tensors)."""
    if loss is None:
        return None
    try:
        return float(loss.item())  # one call at each step: asking numel() first would be a second
    except Exception:  # noqa: BLE001 - item() refuses more than one element; a tuple has no item()
        return None


def _same_float(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return struct.pack("<d", a) == struct.pack("<d", b)


def _attribute(recorded: bytes, got: bytes, names: list[str], width: int) -> str:
    """Name the parameters whose lanes (of `width` bytes) differ: all parameters sharing a differing lane."""
    lanes = {i // width for i, (a, b) in enumerate(zip(recorded, got)) if a != b}
    if not lanes:
        return "the parameters differ"
    suspects = [name for i, name in enumerate(names) if i % LANES in lanes]
    if len(suspects) == 1:
        return f"parameter '{suspects[0]}' differs"
    shown = ", ".join(f"'{n}'" for n in suspects[:6])
    return f"parameters {shown}{' …' if len(suspects) > 6 else ''} differ"
