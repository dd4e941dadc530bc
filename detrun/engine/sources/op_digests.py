"""The outputs of every aten op in chosen optimizer steps: digested, recorded, and compared on replay.

With `record --op-digests K [--op-digest-every N]` the first K optimizer steps, and every Nth after
them, run under a TorchDispatchMode that digests every tensor each op returns (the word sum of
`detrun.engine.digests`, exact integer arithmetic, folded to 32 bits) and stores the step as one
`op.digests` event: the op keys in the order they ran and one digest per op (the bytes are
`detrun.trace.op_codec`'s). A replay captures the same steps and, at the first op whose output
differs from the recording, notes it as an event mismatch: the verdict still comes from the step
digests, and names that op as the likely cause.

The mode is pushed on the main thread when torch is imported (step 1 starts there) and popped in
the step clock's `kernels` phase, before the step digests of the `digests` phase run torch ops of
their own; the next wanted step's capture starts in the `profiler` phase, after them. Views (`t`,
`view`, `detach`) compute nothing and are left out; ops whose output is uninitialised memory
(`empty`, `resize_`) are kept in the sequence with a digest of 0.

`detrun explain`'s replays set `explain_until` = S and `op_dump`: steps 1..S are captured with the
user's line of every op (detrun.profiler.sites: the forward line, also for backward ops), written to
that scratch file, and the run stops after step S. Taking call sites costs too much for recording.
"""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from detrun.engine.digests import MASK64, device_word_sum, tensor_word_sum
from detrun.engine.step_clock import Tick
from detrun.trace.kernel_codec import StringTable
from detrun.trace.op_codec import (MAX_OPS, OpStep, StepDecoder, describe_difference, encode_step, first_difference,
                                   fold64, op_key, skipped_step)
from detrun.trace.registry import OP_DIGESTS as KIND

if TYPE_CHECKING:
    from detrun.engine.session import Session

# Ops whose output is memory nobody wrote yet: in the sequence, never digested.
_UNINITIALISED = frozenset({"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty",
                            "aten::new_empty_strided", "aten::empty_permuted", "aten::resize_", "aten::resize_as_",
                            "aten::_empty_affine_quantized", "aten::_empty_per_channel_affine_quantized"})
_IGNORED_NAMESPACES = frozenset({"profiler"})  # record_function markers: bookkeeping, not computation
_UNSEEN = object()
_forked = False


def _mark_forked() -> None:
    """Stop digesting in a process forked while the mode was pushed (a DataLoader worker)."""
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_mark_forked)


def _setting(settings: dict[str, Any], name: str) -> int:
    value = settings.get(name, 0)
    return value if type(value) is int and value > 0 else 0


class OpDigestSource:
    """Digest every op's outputs in the chosen steps; record them, or compare them with the recording."""

    def __init__(self) -> None:
        self._session: Session | None = None
        self._torch: Any = None
        self._mode: Any = None
        self._pushed = False
        self._stopped: str | None = None  # why no further step is captured
        self._first = self._every = self._until = 0
        self._dump_path: str | None = None
        self._dump: Any = None
        self._table = StringTable()
        self._dump_table = StringTable()
        self._decoder = StepDecoder()
        self._pending: OpStep | None = None  # the next recorded step not yet compared
        self._explained = False
        self._funcs: dict[Any, tuple[str, bool] | None] = {}
        self._keys_of: dict[tuple[str, str], str] = {}
        self._finder: Any = None
        self._node_sites: Any = None
        self._reset()

    def _reset(self) -> None:
        self._keys: list[str] = []
        self._digests: list[Any] = []  # an int, or (device tensor, int) resolved at the step's end
        self._sites: list[str] = []
        self._truncated = 0

    def install(self, session: Session) -> None:
        if self._session is not None:
            return
        self._session = session
        self._first = _setting(session.settings, "op_digests")
        self._every = _setting(session.settings, "op_digest_every")
        if not session.recording:
            self._until = _setting(session.settings, "explain_until")
            dump = session.settings.get("op_dump")
            self._dump_path = dump if isinstance(dump, str) and self._until else None
        if not (self._first or self._every or self._until):
            return
        session.when_imported("torch", self._hook)
        session.on_stop(self._finish)

    def uninstall(self) -> None:
        if self._pushed:
            self._pop()
        if self._session is not None:
            self._session.clock.unsubscribe(self._end_step)
            self._session.clock.unsubscribe(self._start_step)
        self._close_dump()
        self._session = None

    def wanted(self, step: int) -> bool:
        """Say whether optimizer step `step` is captured."""
        if self._until:
            return step <= self._until  # explain: steps 1..S, then the run stops
        return step <= self._first or (self._every > 0 and step % self._every == 0)

    # ------------------------------------------------------------ the mode

    def _hook(self, torch: Any) -> None:
        if self._session is None or self._mode is not None:
            return
        if threading.current_thread() is not threading.main_thread():
            return  # a dispatch mode belongs to one thread; the training loop's is the main thread
        self._torch = torch
        self._mode = _make_mode(torch, self)
        if self._dump_path is not None:
            from detrun.profiler.sites import NodeSites, SiteFinder

            self._finder, self._node_sites = SiteFinder(), NodeSites()
        self._session.clock.subscribe("kernels", self._end_step, "the op digest capture")
        self._session.clock.subscribe("profiler", self._start_step, "the op digest capture")
        if self.wanted(self._session.steps + 1):
            self._push()

    def _push(self) -> None:
        self._reset()
        self._mode.__enter__()
        self._pushed = True

    def _pop(self) -> bool:
        """Pop the mode; False when a mode the script pushed on top of it is still active."""
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        self._pushed = False
        if _get_current_dispatch_mode() is not self._mode:
            # Popping would take the script's mode away. Ours stays below it, idle from now on.
            self._mode.idle = True
            self._stopped = "the script's own dispatch mode was active at the end of the step"
            return False
        self._mode.__exit__(None, None, None)
        return True

    def observe(self, func: Any, out: Any) -> None:
        """Append one op and the digest of its outputs to the step (the mode's hot path)."""
        info = self._funcs.get(func, _UNSEEN)
        if info is _UNSEEN:
            info = self._funcs[func] = _describe(func)
        if info is None:
            return
        if len(self._keys) >= MAX_OPS:
            self._truncated += 1
            return
        name, digested = info
        digest, device = self._digest(out) if digested else (0, _device_of(out))
        key = self._keys_of.get((name, device))
        if key is None:
            key = self._keys_of[(name, device)] = op_key(name, device)
        self._keys.append(key)
        self._digests.append(digest)
        if self._finder is not None:
            self._sites.append(self._site())

    def _digest(self, out: Any) -> tuple[Any, str]:
        """Return the wrapping word sum of every tensor an op returned (or a device part to resolve later)."""
        torch = self._torch
        tensors = (out,) if isinstance(out, torch.Tensor) else \
            [t for t in out if isinstance(t, torch.Tensor)] if isinstance(out, (tuple, list)) else ()
        total, lazy, device = 0, None, None
        for tensor in tensors:
            try:
                if tensor.layout is not torch.strided or tensor.is_meta or tensor.is_quantized:
                    continue
                if tensor.is_cpu:
                    total += tensor_word_sum(torch, tensor)
                    device = device or "cpu"
                else:
                    # One reduction on the device, read at the step's end: no wait per op.
                    part = device_word_sum(torch, tensor)
                    lazy = part if lazy is None else lazy + part
                    device = device or tensor.device.type
            except Exception:  # noqa: BLE001 - a tensor subclass without bytes: digested as nothing, both sides
                continue
        return ((lazy, total) if lazy is not None else total & MASK64), device or "cpu"

    def _site(self) -> str:
        """Return the user's `file:line` behind the op: the forward line, for backward ops too."""
        node = self._torch._C._current_autograd_node()
        if node is None:
            site = self._node_sites.note_forward(self._finder, 3) or self._finder.current(3)
        else:
            site = self._node_sites.for_node(node) or self._finder.current(3)
        return f"{site.file}:{site.line}" if site is not None else "<unknown>"

    # ------------------------------------------------------------ steps

    def _end_step(self, tick: Tick) -> None:
        """End the capture of the step that just finished; record, compare or write it."""
        if self._session is None or not self._pushed:
            return
        popped = self._pop()
        keys, digests, sites, truncated = self._keys, self._digests, self._sites, self._truncated
        self._reset()
        if self._node_sites is not None:
            self._node_sites.clear()  # the step's backward passes are over
        if not popped:
            if self._session.recording:
                self._session.emit(KIND, skipped_step(tick.step, self._stopped or "not captured"))
            return
        got = OpStep(tick.step, keys, self._resolve(digests), sites if self._finder is not None else None,
                     truncated=truncated)
        if self._session.recording:
            self._session.emit(KIND, encode_step(self._table, got.step, got.ops, got.digests, truncated=truncated))
            return
        if self._dump_path is not None:
            self._write_dump(got)
        self._compare(got)

    def _start_step(self, tick: Tick) -> None:
        """Start capturing the next step if it is wanted; explain's replays stop after their last step."""
        if self._session is None or self._stopped is not None:
            return
        if self._until and tick.step >= self._until:
            self._close_dump()
            from detrun.engine.session import RecordingEnded

            raise RecordingEnded()  # a SystemExit: the step clock lets it through, the runner ends the run
        if self.wanted(tick.step + 1):
            self._push()

    def _resolve(self, digests: list[Any]) -> list[int]:
        """Read the device parts of the step's digests (one transfer) and fold every sum to 32 bits."""
        lazy = [i for i, d in enumerate(digests) if type(d) is tuple]
        if lazy:
            torch = self._torch
            values = torch.stack([digests[i][0].reshape(()) for i in lazy]).cpu().tolist()
            for i, value in zip(lazy, values):
                digests[i] = (value + digests[i][1]) & MASK64
        return [fold64(d) for d in digests]

    def _compare(self, got: OpStep) -> None:
        """Note the first op whose output differs from the recording (once per replay)."""
        recorded = self._recorded(got.step)
        if recorded is None or recorded.skipped is not None or self._explained:
            return
        index = first_difference(recorded, got)
        if index is not None:
            self._explained = True
            message = describe_difference(recorded, got, index)
            if got.sites is None:
                message += "; `detrun explain` names its line"
            if self._session.causes:
                # The op is where it shows; an environment difference may be why: keep it in the verdict line.
                message += f" (the environment differs too: {self._session.causes[0]})"
            self._session.mismatch(KIND, message, step=got.step)

    def _recorded(self, step: int) -> OpStep | None:
        """Return the recorded capture of `step`, walking the recorded steps in order."""
        from detrun.engine.session import MISSING

        while True:
            if self._pending is None:
                payload = self._session.take(KIND)
                if payload is MISSING:
                    return None
                try:
                    self._pending = self._decoder.decode(payload)
                except (ValueError, TypeError) as exc:
                    self._explained = True  # nothing after a malformed step can be decoded
                    self._session.mismatch(KIND, f"the recorded op digests are malformed ({exc})")
                    return None
                if self._pending is None:
                    continue
            if self._pending.step > step:
                return None
            recorded, self._pending = self._pending, None
            if recorded.step == step:
                return recorded

    # ------------------------------------------------------------ explain's scratch file

    def _write_dump(self, got: OpStep) -> None:
        import msgpack

        if self._dump is None:
            self._dump = open(self._dump_path, "ab")  # noqa: SIM115 - closed at the last step or the end
        self._dump.write(msgpack.packb(encode_step(self._dump_table, got.step, got.ops, got.digests, got.sites,
                                                   got.truncated), use_bin_type=True))

    def _close_dump(self) -> None:
        if self._dump is not None:
            self._dump.close()
            self._dump = None

    def _finish(self) -> None:
        if self._pushed:
            self._pop()  # a step that never ended: not compared
        self._close_dump()
        if self._session is not None and not self._session.recording:
            self._session.take_all(KIND)  # steps this replay never reached: the step check says so


def _describe(func: Any) -> tuple[str, bool] | None:
    """Return (op name, whether its outputs are digested), or None for an op left out of the sequence."""
    if func.namespace in _IGNORED_NAMESPACES:
        return None
    returns = func._schema.returns
    if any(r.alias_info is not None and not r.alias_info.is_write for r in returns):
        return None  # a view: it computes nothing
    name = func._name  # "aten::add.Tensor"; the default overload has no suffix
    return name, func._schema.name not in _UNINITIALISED


def _device_of(out: Any) -> str:
    """Return the device type of the first tensor an op returned ('cpu' when none)."""
    for tensor in (out,) if not isinstance(out, (tuple, list)) else out:
        device = getattr(tensor, "device", None)
        if device is not None:
            return str(device.type)
    return "cpu"


def _make_mode(torch: Any, owner: OpDigestSource) -> Any:
    """Return the dispatch mode that hands every op and its outputs to `owner` (built once torch is imported)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpDigestMode(TorchDispatchMode):
        """Run each op, then digest what it returned; a failure here never reaches the program."""

        idle = False

        def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                               kwargs: dict[str, Any] | None = None) -> Any:
            out = func(*args, **(kwargs or {}))
            if not self.idle and not _forked:
                try:
                    owner.observe(func, out)
                except Exception as exc:  # noqa: BLE001
                    session = owner._session
                    if session is not None:
                        session.hook_failed("the op digest capture", exc)
            return out

    return OpDigestMode()
