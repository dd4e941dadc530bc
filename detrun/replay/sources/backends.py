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

Thread counts are not pinned here: `torch.set_num_threads()` calls are recorded with their step
and a replay that ends up with other counts names them as the likely cause of a divergence.

Events:
- `backends` — {flag: value} at torch import;
- `backends.set` — [step, site, api, {flag: new value}] for each call that changed flags;
- `threads.set` — [step, site, api, [intra_op, inter_op]] for each set_num_threads / set_num_interop_threads;
- `env.torch` — torch's build facts at import (`env.torch_build_info`);
- `env.cuda` — cuDNN/NCCL versions and devices as torch sees them, once CUDA is initialised.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import sysconfig
from typing import Any, Callable

from detrun.replay.patching import Patcher

INITIAL_KIND = "backends"
CHANGE_KIND = "backends.set"
THREADS_KIND = "threads.set"
TORCH_ENV_KIND = "env.torch"
CUDA_ENV_KIND = "env.cuda"

_OWN_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the detrun package
_STDLIB_DIR = sysconfig.get_paths()["stdlib"]

# The C setters, and the public spelling that reaches each (for messages and `detrun show`).
SETTERS = {
    "_set_cudnn_enabled": "torch.backends.cudnn.enabled",
    "_set_cudnn_benchmark": "torch.backends.cudnn.benchmark",
    "_set_cudnn_deterministic": "torch.backends.cudnn.deterministic",
    "_set_cudnn_allow_tf32": "torch.backends.cudnn.allow_tf32",
    "_cuda_set_cudnn_benchmark_limit": "torch.backends.cudnn.benchmark_limit",
    "_set_cudnn_depthwise_kernel": "torch.backends.cudnn.depthwise_kernel",
    "_set_cublas_allow_tf32": "torch.backends.cuda.matmul.allow_tf32",
    "_set_cublas_allow_fp16_reduced_precision_reduction":
        "torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction",
    "_set_cublas_allow_bf16_reduced_precision_reduction":
        "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction",
    "_set_cublas_allow_fp16_accumulation": "torch.backends.cuda.matmul.allow_fp16_accumulation",
    "_set_fp32_precision_setter": "fp32_precision",
    "_set_float32_matmul_precision": "torch.set_float32_matmul_precision",
    "_set_mkldnn_enabled": "torch.backends.mkldnn.enabled",
    "_set_mkldnn_deterministic": "torch.backends.mkldnn.deterministic",
    "_set_onednn_allow_tf32": "torch.backends.mkldnn.allow_tf32",
    "_set_sdp_use_flash": "torch.backends.cuda.enable_flash_sdp",
    "_set_sdp_use_mem_efficient": "torch.backends.cuda.enable_mem_efficient_sdp",
    "_set_sdp_use_math": "torch.backends.cuda.enable_math_sdp",
    "_set_sdp_use_cudnn": "torch.backends.cuda.enable_cudnn_sdp",
    "_set_sdp_use_fa3": "torch.backends.cuda.enable_fa3_sdp",
    "_set_sdp_use_overrideable": "torch.backends.cuda.enable_overrideable_sdp",
    "_set_math_sdp_allow_fp16_bf16_reduction": "torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp",
    "_set_sdp_priority_order": "torch.nn.attention.sdpa_kernel(set_priority=True)",
    "_set_deterministic_algorithms": "torch.use_deterministic_algorithms",
    "_set_deterministic_fill_uninitialized_memory": "torch.utils.deterministic.fill_uninitialized_memory",
    "_set_blas_preferred_backend": "torch.backends.cuda.preferred_blas_library",
    "_set_linalg_preferred_backend": "torch.backends.cuda.preferred_linalg_library",
}

# The fp32_precision attributes (torch >= 2.9): (backend, op) behind each public name. They hold
# the state; the legacy allow_tf32 flags are views on them, so those are not pinned directly.
FP32_PRECISION = (
    ("fp32_precision", "generic", "all"),
    ("cudnn.fp32_precision", "cuda", "all"),
    ("mkldnn.fp32_precision", "mkldnn", "all"),
    ("cuda.matmul.fp32_precision", "cuda", "matmul"),
    ("cudnn.conv.fp32_precision", "cuda", "conv"),
    ("cudnn.rnn.fp32_precision", "cuda", "rnn"),
    ("mkldnn.matmul.fp32_precision", "mkldnn", "matmul"),
    ("mkldnn.conv.fp32_precision", "mkldnn", "conv"),
    ("mkldnn.rnn.fp32_precision", "mkldnn", "rnn"),
)
_FP32_NAMES = {(backend, op): f"torch.backends.{name}" for name, backend, op in FP32_PRECISION}
LEGACY_TF32 = ("cuda.matmul.allow_tf32", "cudnn.allow_tf32", "mkldnn.allow_tf32")
# (flag, getter, setter) read and written through torch._C; absent functions are skipped (older torch).
PLAIN_FLAGS = (
    ("cuda.matmul.allow_tf32", "_get_cublas_allow_tf32", "_set_cublas_allow_tf32"),
    ("cudnn.allow_tf32", "_get_cudnn_allow_tf32", "_set_cudnn_allow_tf32"),
    ("mkldnn.allow_tf32", "_get_onednn_allow_tf32", "_set_onednn_allow_tf32"),
    ("cuda.matmul.allow_fp16_reduced_precision_reduction", "_get_cublas_allow_fp16_reduced_precision_reduction",
     "_set_cublas_allow_fp16_reduced_precision_reduction"),
    ("cuda.matmul.allow_bf16_reduced_precision_reduction", "_get_cublas_allow_bf16_reduced_precision_reduction",
     "_set_cublas_allow_bf16_reduced_precision_reduction"),
    ("cuda.matmul.allow_fp16_accumulation", "_get_cublas_allow_fp16_accumulation",
     "_set_cublas_allow_fp16_accumulation"),
    ("cudnn.enabled", "_get_cudnn_enabled", "_set_cudnn_enabled"),
    ("cudnn.benchmark", "_get_cudnn_benchmark", "_set_cudnn_benchmark"),
    ("cudnn.deterministic", "_get_cudnn_deterministic", "_set_cudnn_deterministic"),
    ("cudnn.benchmark_limit", "_cuda_get_cudnn_benchmark_limit", "_cuda_set_cudnn_benchmark_limit"),
    ("cudnn.depthwise_kernel", "_get_cudnn_depthwise_kernel", "_set_cudnn_depthwise_kernel"),
    ("mkldnn.enabled", "_get_mkldnn_enabled", "_set_mkldnn_enabled"),
    ("mkldnn.deterministic", "_get_mkldnn_deterministic", "_set_mkldnn_deterministic"),
    ("cuda.flash_sdp", "_get_flash_sdp_enabled", "_set_sdp_use_flash"),
    ("cuda.mem_efficient_sdp", "_get_mem_efficient_sdp_enabled", "_set_sdp_use_mem_efficient"),
    ("cuda.math_sdp", "_get_math_sdp_enabled", "_set_sdp_use_math"),
    ("cuda.cudnn_sdp", "_get_cudnn_sdp_enabled", "_set_sdp_use_cudnn"),
    ("cuda.fa3_sdp", "_get_fa3_sdp_enabled", "_set_sdp_use_fa3"),
    ("cuda.overrideable_sdp", "_get_overrideable_sdp_enabled", "_set_sdp_use_overrideable"),
    ("cuda.math_sdp_allow_fp16_bf16_reduction", "_get_math_sdp_allow_fp16_bf16_reduction",
     "_set_math_sdp_allow_fp16_bf16_reduction"),
    ("cuda.sdp_priority_order", "_get_sdp_priority_order", "_set_sdp_priority_order"),
    ("deterministic.fill_uninitialized_memory", "_get_deterministic_fill_uninitialized_memory",
     "_set_deterministic_fill_uninitialized_memory"),
)


def public_name(flag: str) -> str:
    """Return the spelling a user knows a flag by."""
    if flag == "float32_matmul_precision":
        return "torch.get_float32_matmul_precision()"
    if flag == "deterministic_algorithms":
        return "torch.are_deterministic_algorithms_enabled()"
    if flag == "deterministic_algorithms.warn_only":
        return "torch.is_deterministic_algorithms_warn_only_enabled()"
    if flag == "deterministic.fill_uninitialized_memory":
        return "torch.utils.deterministic.fill_uninitialized_memory"
    if flag.startswith("cuda.") and flag.endswith("_sdp"):
        return f"torch.backends.cuda.{flag[5:]}_enabled()"
    return f"torch.backends.{flag}"


def describe_changes(changes: dict[str, Any], limit: int = 2) -> str:
    """Return 'torch.backends.cudnn.benchmark=True' for a change set (the first few flags)."""
    shown = ", ".join(f"{public_name(k)}={v!r}" for k, v in list(changes.items())[:limit])
    return shown + (f" (+{len(changes) - limit} more)" if len(changes) > limit else "")


def call_text(api: str, changes: dict[str, Any]) -> str:
    """Return the call a change set came from, as the script spelled it where that can be told."""
    more = f" (and {len(changes) - 1} more flags)" if len(changes) > 1 else ""
    if api == "torch.set_float32_matmul_precision" and "float32_matmul_precision" in changes:
        return f"{api}({changes['float32_matmul_precision']!r})"
    if api == "torch.use_deterministic_algorithms" and "deterministic_algorithms" in changes:
        return f"{api}({changes['deterministic_algorithms']!r})"
    for key, value in changes.items():
        if public_name(key) == api:
            return f"{api} = {value!r}{more}"
        if api.startswith("torch.backends.cuda.enable_") and public_name(key).endswith(f"{api[27:]}_enabled()"):
            return f"{api}({value!r}){more}"
    return f"{api} (changing {describe_changes(changes)})"


def when(step: int) -> str:
    """Return where in the run a change at `step` completed optimizer steps happened."""
    return "before the first optimizer step" if step == 0 else f"after step {step}"


@dataclasses.dataclass
class _Flag:
    name: str
    get: Callable[[], Any]
    set: Callable[[Any, dict[str, Any]], None] | None
    derived: bool = False


def _plain(value: Any) -> Any:
    """Return a flag value as plain data (tuples as lists, enums by name)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else str(value)


def flag_table(torch: Any, originals: dict[str, Any] | None = None) -> list[_Flag]:
    """Return every flag this torch has, in the order pinning must set them."""
    C = torch._C
    originals = originals or {}

    def c(name: str) -> Any:
        return originals.get(name) or getattr(C, name, None)

    flags: list[_Flag] = []
    has_fp32 = c("_get_fp32_precision_getter") is not None and c("_set_fp32_precision_setter") is not None
    # torch.set_float32_matmul_precision also rewrites the matmul fp32_precision entries, so it goes
    # first and the fp32_precision entries after it put those back exactly.
    if c("_get_float32_matmul_precision"):
        flags.append(_Flag("float32_matmul_precision", c("_get_float32_matmul_precision"),
                           lambda v, _t: c("_set_float32_matmul_precision")(v)))
    if has_fp32:
        for name, backend, op in FP32_PRECISION:
            flags.append(_Flag(name, lambda b=backend, o=op: c("_get_fp32_precision_getter")(b, o),
                               lambda v, _t, b=backend, o=op: c("_set_fp32_precision_setter")(b, o, v)))
    for name, getter, setter in PLAIN_FLAGS:
        if c(getter) is None:
            continue
        set_flag = None
        if c(setter) is not None:
            if name.endswith("reduced_precision_reduction"):
                # A (reduced precision, split-K) pair since torch 2.8; a bool before.
                set_flag = (lambda v, _t, s=setter: c(s)(*v) if isinstance(v, list) else c(s)(v))
            elif name.startswith("cuda.preferred"):
                set_flag = None
            else:
                set_flag = (lambda v, _t, s=setter: c(s)(v))
        flags.append(_Flag(name, lambda g=getter: c(g)(), set_flag, derived=has_fp32 and name in LEGACY_TF32))
    for name, getter, setter, enum in (
        ("cuda.preferred_blas_library", "_get_blas_preferred_backend", "_set_blas_preferred_backend", "_BlasBackend"),
        ("cuda.preferred_linalg_library", "_get_linalg_preferred_backend", "_set_linalg_preferred_backend",
         "_LinalgBackend"),
    ):
        if c(getter) is not None and c(setter) is not None and hasattr(C, enum):
            flags.append(_Flag(name, lambda g=getter: c(g)(),
                               lambda v, _t, s=setter, e=enum: c(s)(getattr(getattr(C, e), v))))
    if c("_get_deterministic_algorithms"):
        def set_deterministic(value: Any, target: dict[str, Any]) -> None:
            warn_only = target.get("deterministic_algorithms.warn_only", c("_get_deterministic_algorithms_warn_only")())
            c("_set_deterministic_algorithms")(value, warn_only=warn_only)

        flags.append(_Flag("deterministic_algorithms", c("_get_deterministic_algorithms"), set_deterministic))
        if c("_get_deterministic_algorithms_warn_only"):
            flags.append(_Flag("deterministic_algorithms.warn_only", c("_get_deterministic_algorithms_warn_only"),
                               lambda v, t: c("_set_deterministic_algorithms")(
                                   t.get("deterministic_algorithms", c("_get_deterministic_algorithms")()),
                                   warn_only=v)))
    return flags


def snapshot(flags: list[_Flag]) -> dict[str, Any]:
    """Return {flag: value} for every flag that can be read now."""
    state = {}
    for flag in flags:
        try:
            state[flag.name] = _plain(flag.get())
        except Exception:  # noqa: BLE001 - a legacy TF32 getter refuses once the new API was used: leave it out
            continue
    return state


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Return {flag: new value} for the flags that differ (None for one that can no longer be read)."""
    return {k: after.get(k) for k in [*after, *(k for k in before if k not in after)] if before.get(k) != after.get(k)}


def torch_state(torch: Any) -> dict[str, Any]:
    """Return the current value of every backend flag (for `detrun env`)."""
    return snapshot(flag_table(torch))


class BackendsSource:
    """Record the backend flags at torch import and every change; pin and check them on replay."""

    def __init__(self) -> None:
        self._patcher = Patcher()
        self._installed = False
        self._session: Any = None
        self._torch: Any = None
        self._torch_dir = ""
        self._flags: list[_Flag] = []
        self._state: dict[str, Any] = {}
        self._busy = False
        self._post_hook: Any = None
        self._steps_done = 0
        self._cuda_checked = False
        # replay
        self._queue: list[Any] = []
        self._next = 0
        self._early = False
        self._threads: list[int] | None = None
        self._threads_next = 0

    # ------------------------------------------------------------ install / uninstall

    def install(self, session: Any) -> None:
        if self._installed:
            return
        self._installed = True
        self._session = session
        session.when_imported("torch", self._hook)
        session.on_stop(self._finish)

    def uninstall(self) -> None:
        self._installed = False
        if self._post_hook is not None:
            self._post_hook.remove()
            self._post_hook = None
        self._patcher.undo()
        self._session = None

    def _hook(self, torch: Any) -> None:
        session = self._session
        if session is None or self._patcher.active:
            return
        from detrun import env

        self._torch = torch
        self._torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
        originals = {name: getattr(torch._C, name) for name in SETTERS if hasattr(torch._C, name)}
        self._flags = flag_table(torch, originals)
        self._state = snapshot(self._flags)
        build = env.torch_build_info(torch)
        build["cpu_capability"] = _call(lambda: torch.backends.cpu.get_cpu_capability())
        threads = [torch.get_num_threads(), torch.get_num_interop_threads()]
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
            # What the recording ran with after the threads source pinned it (read, not taken).
            recorded_threads = session.recorded("threads")
            self._threads = list(recorded_threads[0]) if recorded_threads else threads
        self._patch_setters(torch, originals)
        self._patch_threads(torch)
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._post_hook = register_optimizer_step_post_hook(self._after_step)

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
                    source._on_change(_FP32_NAMES.get(tuple(args[:2]), api) if fp32 else api)
                except Exception as exc:  # noqa: BLE001 - never change what the program does
                    session.hook_failed(f"the {api} hook", exc)
            return result

        hooked.__name__ = getattr(original, "__name__", api)
        hooked.__doc__ = getattr(original, "__doc__", None)
        return hooked

    def _patch_threads(self, torch: Any) -> None:
        for name, label in (("set_num_threads", "torch.set_num_threads"),
                            ("set_num_interop_threads", "torch.set_num_interop_threads")):
            original = getattr(torch, name, None)
            if original is None:
                continue
            self._patcher.setattr(torch, name, self._wrap_threads(original, label))

    def _wrap_threads(self, original: Callable[..., Any], api: str) -> Callable[..., Any]:
        source = self

        # Mirrors torch.set_num_threads / set_num_interop_threads (torch 2.x); the latter raises
        # once inter-op work has started, and then nothing changed and nothing is recorded.
        def hooked(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            session = source._session
            if session is not None and not source._busy:
                try:
                    source._on_threads(api)
                except Exception as exc:  # noqa: BLE001
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
        # Recorded changes whose step is over were applied at that step's end (_after_step), so the
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
        session.diverge(CHANGE_KIND, message)

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

    # ------------------------------------------------------------ threads

    def _on_threads(self, api: str) -> None:
        session = self._session
        torch = self._torch
        now = [torch.get_num_threads(), torch.get_num_interop_threads()]
        step, site = session.steps, self._site()
        if session.recording:
            session.emit(THREADS_KIND, [step, site, api, now])
            return
        self._threads_overdue(step, "the replay did not")
        recorded = self._next_threads()
        how = f"set by {api} at {site} {when(step)}"
        if recorded is None:
            self._note_threads(now, f"{how}, a call the recording does not have")
            return
        self._take_threads(recorded)
        if recorded[0] != step and recorded[3] == now:
            self._session.note_cause(f"torch threads set {when(step)} ({site}), the recording set them "
                                     f"{when(recorded[0])} ({recorded[1]})", likely=True)
        self._note_threads(now, how)

    def _next_threads(self) -> list[Any] | None:
        queue = self._session.recorded(THREADS_KIND)
        while self._threads_next < len(queue):
            recorded = queue[self._threads_next]
            if isinstance(recorded, list) and len(recorded) == 4 and isinstance(recorded[3], list):
                return recorded
            self._take_threads(None)
        return None

    def _take_threads(self, recorded: list[Any] | None) -> None:
        self._threads_next += 1
        self._session.take(THREADS_KIND)
        if recorded is not None:
            self._threads = list(recorded[3])

    def _threads_overdue(self, steps_done: int, what: str) -> None:
        """Account for recorded thread changes whose step is over; name any count that now differs."""
        while (recorded := self._next_threads()) is not None and recorded[0] < steps_done:
            self._take_threads(recorded)
            torch = self._torch
            self._note_threads([torch.get_num_threads(), torch.get_num_interop_threads()],
                               f"the recording set them with {recorded[2]} at {recorded[1]} {when(recorded[0])}; "
                               f"{what}")

    def _note_threads(self, now: list[int], how: str) -> None:
        if self._threads is None:
            return
        for label, recorded, current in zip(("intra-op", "inter-op"), self._threads, now):
            if recorded != current:
                self._session.note_cause(f"torch {label} threads: recorded {recorded}, now {current} ({how})",
                                         likely=True)

    # ------------------------------------------------------------ step boundaries and the end

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        session = self._session
        if session is None:
            return
        try:
            self._steps_done += 1
            if not self._cuda_checked:
                self._check_cuda()
            if not session.recording:
                self._catch_up(self._steps_done)
                self._threads_overdue(self._steps_done, "the replay did not")
        except Exception as exc:  # noqa: BLE001
            session.hook_failed("the backend flags step hook", exc)

    def _check_cuda(self) -> None:
        """Record (or compare) what torch sees of CUDA, once CUDA is up; never initialise it."""
        torch = self._torch
        cuda = getattr(torch, "cuda", None)
        if cuda is None or not _call(cuda.is_initialized):
            return
        self._cuda_checked = True
        from detrun import env

        info = env.torch_cuda_info(torch)
        session = self._session
        if session.recording:
            session.emit(CUDA_ENV_KIND, info)
            return
        recorded = session.take(CUDA_ENV_KIND)
        if isinstance(recorded, dict):
            _note_differences(session, "torch CUDA", recorded, info)

    def _finish(self) -> None:
        session = self._session
        if session is None or session.recording or session.trace is None or not session.trace.complete:
            return
        while (recorded := self._peek()) is not None:
            self._take()
            step, site, api, changes = recorded
            recorded_call = call_text(api, changes)
            self._diverge(f"the recording made {recorded_call} {when(step)} ({site}); the replay never did",
                          f"{recorded_call} (recorded {when(step)}) not made by the replay")
        self._threads_overdue(sys.maxsize, "the replay never did")

    def _site(self) -> str:
        """Return `file:line` of the nearest frame outside detrun, torch and the standard library."""
        frame = sys._getframe(2)
        while frame is not None:
            filename = frame.f_code.co_filename
            stdlib = filename.startswith(_STDLIB_DIR) and "site-packages" not in filename
            if not (filename.startswith((_OWN_DIR, "<frozen")) or stdlib
                    or (self._torch_dir and filename.startswith(self._torch_dir))):
                return f"{os.path.basename(filename)}:{frame.f_lineno}"
            frame = frame.f_back
        return "<unknown>"


def _call(function: Callable[[], Any]) -> Any:
    try:
        return function()
    except Exception:  # noqa: BLE001
        return None


def _note_differences(session: Any, what: str, recorded: dict[str, Any], current: dict[str, Any]) -> None:
    """Note each differing field of torch's own view of the environment as a possible cause."""
    from detrun import env

    for key, old, new in env.diff(recorded, current):
        session.note_cause(f"{what} {key}: recorded {old!r}, now {new!r}")
