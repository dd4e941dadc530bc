"""Backend flags: cuDNN, cuBLAS/TF32, SDPA, oneDNN and determinism settings, recorded and pinned on replay.

When the script imports torch, the value of every flag is recorded; every later call that changes one
is recorded with the optimizer step at which it happened. On replay the start values are pinned, each
change is checked when the script makes it, and a change the replay makes at another step, or with
other values, is a divergence (and a likely cause): the flags are put back to what the recording had
at that point, and a recorded change the replay never makes is applied when its step is over.

The hooks sit on the `torch._C._set_*` functions, which every public spelling reaches at call time
(`torch.backends.cuda.matmul.allow_tf32 = ...`, `enable_flash_sdp()`, `set_float32_matmul_precision()`,
`use_deterministic_algorithms()`, the `flags()` context managers, the fp32_precision attributes),
except the `ContextProp` descriptors of `torch.backends.cudnn`/`mkldnn`, which captured the C setter
when torch was imported: their `setter` attribute is patched too. After each hooked call the flags
are read back and only actual changes are recorded, so save/restore patterns cost nothing.

Thread counts are not this module's: `thread_counts` owns them, `torch.set_num_threads()` calls included.

Events:
- `backends` — {flag: value} at torch import;
- `backends.set` — [step, site, api, {flag: new value}] for each call that changed flags;
- `env.torch` — torch's build facts at import (`detrun.env.torch_facts.torch_build_info`);
- `env.cuda` — cuDNN/NCCL versions and devices as torch sees them, once CUDA is initialised.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Callable

from detrun.engine.patcher import TorchStepSource
from detrun.engine.call_sites import call_site
from detrun.engine.step_clock import Tick
from detrun.env.torch_facts import (
    FP32_NAMES,
    SETTERS,
    Flag,
    call_text,
    changed,
    flag_table,
    public_name,
    snapshot,
    torch_build_info,
    torch_cuda_info,
    when,
)
from detrun.trace.registry import (  # the kinds, their payload schemas and versions
    BACKENDS as INITIAL_KIND,
    BACKENDS_SET as CHANGE_KIND,
    ENV_CUDA as CUDA_ENV_KIND,
    ENV_TORCH as TORCH_ENV_KIND,
)

if TYPE_CHECKING:
    from detrun.engine.session import Session


class BackendsSource(TorchStepSource):
    """Record the backend flags at torch import and every change; pin and check them on replay."""

    def __init__(self) -> None:
        super().__init__()
        self._session: Session | None = None
        self._flags: list[Flag] = []
        self._state: dict[str, Any] = {}
        self._busy = False
        self._cuda_checked = False
        # replay
        self._queue: list[Any] = []
        self._next = 0
        self._early = False

    # ------------------------------------------------------------ hooks (install and uninstall: TorchStepSource)

    def _hook(self, torch: Any) -> None:
        session = self._session
        if session is None or self._patcher.active:
            return

        self._torch = torch
        self._torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
        originals = {name: getattr(torch._C, name) for name in SETTERS if hasattr(torch._C, name)}
        self._flags = flag_table(torch, originals)
        self._state = snapshot(self._flags)
        build = torch_build_info(torch)
        build["cpu_capability"] = _call(lambda: torch.backends.cpu.get_cpu_capability())
        if session.recording:
            session.emit(INITIAL_KIND, self._state)
            session.emit(TORCH_ENV_KIND, build)
        else:
            self._queue = list(session.recorded(CHANGE_KIND))
            recorded = session.take(INITIAL_KIND)
            if isinstance(recorded, dict):
                self._apply({**self._state, **recorded}, "at torch import")
            recorded_build = session.take(TORCH_ENV_KIND)
            if isinstance(recorded_build, dict):
                _note_differences(session, "torch", recorded_build, build)
        self._patch_setters(torch, originals)
        self._subscribe("the backend flags step hook")

    def _patch_setters(self, torch: Any, originals: dict[str, Any]) -> None:
        wrapped = {}
        for name, original in originals.items():
            wrapped[id(original)] = hooked = self._wrap(original, SETTERS[name], name == "_set_fp32_precision_setter")
            self._patcher.setattr(torch._C, name, hooked)
        # The cudnn/mkldnn module properties hold the C setter they were built with.
        backends = sys.modules.get("torch.backends")
        for module in (backends, *(getattr(backends, m, None) for m in ("cudnn", "mkldnn", "cuda"))):
            if module is None:
                continue
            for attribute in list(vars(type(module)).values()):
                setter = getattr(attribute, "setter", None)
                if setter is not None and id(setter) in wrapped and type(attribute).__name__ == "ContextProp":
                    self._patcher.setattr(attribute, "setter", wrapped[id(setter)])

    def _wrap(self, original: Callable[..., Any], api: str, fp32: bool = False) -> Callable[..., Any]:
        source = self

        # Mirrors the torch._C._set_* flag setters (torch 2.x): the real call runs first, so bad
        # values raise exactly as they would; then the flags are read back.
        def hooked(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            session = source._session
            if session is not None and not source._busy:
                try:
                    # _set_fp32_precision_setter(backend, op, value) serves every fp32_precision attribute.
                    source._on_change(FP32_NAMES.get(tuple(args[:2]), api) if fp32 else api)
                except Exception as exc:  # noqa: BLE001 - never change what the program does
                    session.hook_failed(f"the {api} hook", exc)
            return result

        hooked.__name__ = getattr(original, "__name__", api)
        hooked.__doc__ = getattr(original, "__doc__", None)
        return hooked

    # ------------------------------------------------------------ flag changes

    def _on_change(self, api: str) -> None:
        session = self._session
        before = self._state
        after = snapshot(self._flags)
        changes = changed(before, after)
        self._state = after
        if not changes:
            return
        step, site = session.steps, self._site()
        if session.recording:
            session.emit(CHANGE_KIND, [step, site, api, changes])
            return
        # Recorded changes whose step is over were applied at that step's end (_on_tick), so the
        # next recorded change is the one this call should match.
        recorded = self._peek()
        if recorded is not None and recorded[0] == step and recorded[3] == changes:
            self._take()
            return
        call = call_text(api, changes)
        if recorded is not None and recorded[0] == step:
            self._take()
            recorded_call = call_text(recorded[2], recorded[3])
            self._diverge(f"{call} at {site} {when(step)}, but the recording made {recorded_call} there "
                          f"({recorded[1]}); pinned to the recorded flags",
                          f"{call} {when(step)} instead of the recorded {recorded_call}")
            self._apply({**before, **recorded[3]}, when(step))
            return
        if recorded is not None and set(recorded[3]) & set(changes):
            self._early = True  # apply the recorded change at its own step
            self._diverge(f"{call} at {site} {when(step)}, but the recording made that change {when(recorded[0])} "
                          f"({recorded[1]}); pinned to the recorded flags",
                          f"{call} made {when(step)} instead of {when(recorded[0])}")
        else:
            self._early = recorded is not None
            self._diverge(f"{call} at {site} {when(step)}, a change the recording does not have there; "
                          "pinned to the recorded flags", f"{call} made {when(step)}, which the recording never did")
        self._apply(before, when(step))

    def _catch_up(self, steps_done: int) -> None:
        """Apply the recorded changes whose step is over; one the replay never made is a divergence."""
        while (recorded := self._peek()) is not None:
            step, site, api, changes = recorded
            # A change recorded after step k belongs before step k + 1 ends; once the replay has
            # gone astray (_early), recorded changes are applied as soon as their step begins.
            due = step < steps_done or (self._early and step <= steps_done)
            if not due:
                return
            self._take()
            if not (self._early and step <= steps_done and self._state_has(changes)):
                if not self._early:
                    recorded_call = call_text(api, changes)
                    self._diverge(f"the recording made {recorded_call} {when(step)} ({site}); the replay had not by "
                                  f"the end of step {steps_done}; pinned to the recorded flags",
                                  f"{recorded_call} (recorded {when(step)}) not made by the replay")
                self._apply({**self._state, **changes}, f"after step {steps_done}")

    def _state_has(self, changes: dict[str, Any]) -> bool:
        return all(self._state.get(k) == v for k, v in changes.items())

    def _peek(self) -> Any:
        while self._next < len(self._queue):
            recorded = self._queue[self._next]
            if isinstance(recorded, list) and len(recorded) == 4 and isinstance(recorded[3], dict):
                return recorded
            self._take()  # a malformed event: skip it rather than stall
        return None

    def _take(self) -> None:
        self._next += 1
        self._session.take(CHANGE_KIND)

    def _diverge(self, message: str, cause: str) -> None:
        session = self._session
        session.note_cause(cause, likely=True)
        session.mismatch(CHANGE_KIND, message)

    def _apply(self, target: dict[str, Any], where: str) -> None:
        """Set every flag to its value in `target`; note the ones torch would not take."""
        session = self._session
        current = snapshot(self._flags)
        failed = []
        self._busy = True
        try:
            for flag in self._flags:
                if flag.derived or flag.set is None or flag.name not in target:
                    continue
                if current.get(flag.name) == target[flag.name]:
                    continue
                try:
                    flag.set(target[flag.name], target)
                except Exception:  # noqa: BLE001 - e.g. a value this torch does not know
                    failed.append(flag.name)
                current = snapshot(self._flags)
        finally:
            self._busy = False
        self._state = snapshot(self._flags)
        wrong = [k for k, v in target.items() if k in self._state and self._state[k] != v]
        for name in dict.fromkeys(failed + wrong):
            session.note_cause(f"backend flag {public_name(name)} could not be pinned {where}: recorded "
                               f"{target.get(name)!r}, now {self._state.get(name)!r}")

    # ------------------------------------------------------------ step boundaries and the end

    def _on_tick(self, tick: Tick) -> None:
        """At the end of each step: check CUDA once, and apply recorded changes whose step is over."""
        session = self._session
        if session is None:
            return
        # At the first step (and every 64th after, while a replay still has recorded changes to
        # apply), not at every step: a CPU run would ask torch.cuda at each. The end checks again.
        if not self._cuda_checked and tick.step & 63 == 1:
            self._check_cuda()
        if not session.recording:
            self._catch_up(tick.step)
        if session.recording or self._next >= len(self._queue):
            # Nothing else to do at a step (a recording's, or a replay's once every recorded change
            # is applied; later calls are checked as they are made); a CUDA started later is seen at the end.
            session.clock.unsubscribe(self._on_tick)
            self._subscribed = False

    def _check_cuda(self) -> None:
        """Record (or compare) what torch sees of CUDA, once CUDA is up; never initialise it."""
        torch = self._torch
        cuda = getattr(torch, "cuda", None)
        if cuda is None or not _call(cuda.is_initialized):
            return
        self._cuda_checked = True

        info = torch_cuda_info(torch)
        session = self._session
        if session.recording:
            session.emit(CUDA_ENV_KIND, info)
            return
        recorded = session.take(CUDA_ENV_KIND)
        if isinstance(recorded, dict):
            _note_differences(session, "torch CUDA", recorded, info)

    def _finish(self) -> None:
        session = self._session
        if session is not None and not self._cuda_checked:
            self._check_cuda()
        if session is None or session.recording or session.trace is None or not session.trace.complete:
            return
        while (recorded := self._peek()) is not None:
            self._take()
            step, site, api, changes = recorded
            recorded_call = call_text(api, changes)
            self._diverge(f"the recording made {recorded_call} {when(step)} ({site}); the replay never did",
                          f"{recorded_call} (recorded {when(step)}) not made by the replay")

    def _site(self) -> str:
        """Return `file:line` of the script's line that made the call (torch's own frames skipped)."""
        return call_site(self._torch_dir)


def _call(function: Callable[[], Any]) -> Any:
    try:
        return function()
    except Exception:  # noqa: BLE001
        return None


def _note_differences(session: Session, what: str, recorded: dict[str, Any], current: dict[str, Any]) -> None:
    """Note each differing field of torch's own view of the environment as a possible cause."""
    from detrun.env.diff import diff as diff_fingerprints  # start-up: only a replay's torch import needs it

    for key, old, new in diff_fingerprints(recorded, current):
        session.note_cause(f"{what} {key}: recorded {old!r}, now {new!r}")
