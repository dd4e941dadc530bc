"""What only a running torch knows: its build facts, its CUDA facts, and the catalogue of backend flags.

Nothing here imports torch; every function takes the module the script already imported. The flag
catalogue is shared by the backend-flags source (record and pin) and `detrun env` (display).
"""
from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

from detrun.env.fingerprint import UNAVAILABLE, probe

def torch_build_info(torch: Any) -> dict[str, Any]:
    """Return torch's build facts; safe at import time (it initialises nothing, CUDA included)."""
    def config(pattern: str) -> str:
        match = re.search(pattern, show)
        return match.group(1) if match else UNAVAILABLE

    show = str(probe(torch.__config__.show))
    return {
        "version": str(torch.__version__),
        "git": str(getattr(torch.version, "git_version", UNAVAILABLE)),
        "cuda": str(torch.version.cuda or "none (CPU build)"),
        "hip": str(getattr(torch.version, "hip", None) or "none"),
        "cudnn_built": bool(probe(lambda: torch.backends.cudnn.is_available()) is True),
        "mkldnn": bool(probe(lambda: torch.backends.mkldnn.is_available()) is True),
        "mkl": bool(probe(lambda: torch.backends.mkl.is_available()) is True),
        "onednn_version": config(r"(?:MKL-DNN|oneDNN)\s+v?([0-9][^\s(]*)"),
        "mkl_version": config(r"Math Kernel Library Version ([0-9.]+)"),
        "cxx_abi": config(r"CXX11_ABI_FLAG=(\d)"),
    }


def torch_cuda_info(torch: Any) -> dict[str, Any]:
    """Return what torch sees of CUDA at run time; call only once CUDA is initialised (it would initialise it)."""
    devices = []
    for i in range(torch.cuda.device_count()):
        name = probe(lambda: torch.cuda.get_device_name(i))
        capability = probe(lambda: ".".join(map(str, torch.cuda.get_device_capability(i))))
        devices.append({"name": name, "compute_capability": capability})
    return {
        "cudnn": str(probe(torch.backends.cudnn.version)),
        "nccl": str(probe(lambda: ".".join(map(str, torch.cuda.nccl.version())))),
        "devices": devices,
    }


def torch_fingerprint(torch: Any) -> dict[str, Any]:
    """Return torch's build facts and, when a GPU is usable, its CUDA facts (for `detrun env`)."""
    info = torch_build_info(torch)
    usable = bool(probe(torch.cuda.is_available) is True)
    info["cuda_available"] = usable
    info["runtime"] = torch_cuda_info(torch) if usable else UNAVAILABLE
    info["threads"] = {"intra_op": probe(torch.get_num_threads), "inter_op": probe(torch.get_num_interop_threads)}
    return info




# ------------------------------------------------------------------------------ backend flags

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
FP32_NAMES = {(backend, op): f"torch.backends.{name}" for name, backend, op in FP32_PRECISION}
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


# A NamedTuple, not a dataclass: the sources import this module at start-up, and dataclasses brings inspect.
class Flag(NamedTuple):
    """One backend flag: how to read it, how to set it, and whether it is a view on another."""

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


def flag_table(torch: Any, originals: dict[str, Any] | None = None) -> list[Flag]:
    """Return every flag this torch has, in the order pinning must set them."""
    C = torch._C
    originals = originals or {}

    def c(name: str) -> Any:
        return originals.get(name) or getattr(C, name, None)

    flags: list[Flag] = []
    has_fp32 = c("_get_fp32_precision_getter") is not None and c("_set_fp32_precision_setter") is not None
    # torch.set_float32_matmul_precision also rewrites the matmul fp32_precision entries, so it goes
    # first and the fp32_precision entries after it put those back exactly.
    if c("_get_float32_matmul_precision"):
        flags.append(Flag("float32_matmul_precision", c("_get_float32_matmul_precision"),
                           lambda v, _t: c("_set_float32_matmul_precision")(v)))
    if has_fp32:
        for name, backend, op in FP32_PRECISION:
            flags.append(Flag(name, lambda b=backend, o=op: c("_get_fp32_precision_getter")(b, o),
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
        flags.append(Flag(name, lambda g=getter: c(g)(), set_flag, derived=has_fp32 and name in LEGACY_TF32))
    for name, getter, setter, enum in (
        ("cuda.preferred_blas_library", "_get_blas_preferred_backend", "_set_blas_preferred_backend", "_BlasBackend"),
        ("cuda.preferred_linalg_library", "_get_linalg_preferred_backend", "_set_linalg_preferred_backend",
         "_LinalgBackend"),
    ):
        if c(getter) is not None and c(setter) is not None and hasattr(C, enum):
            flags.append(Flag(name, lambda g=getter: c(g)(),
                               lambda v, _t, s=setter, e=enum: c(s)(getattr(getattr(C, e), v))))
    if c("_get_deterministic_algorithms"):
        def set_deterministic(value: Any, target: dict[str, Any]) -> None:
            warn_only = target.get("deterministic_algorithms.warn_only", c("_get_deterministic_algorithms_warn_only")())
            c("_set_deterministic_algorithms")(value, warn_only=warn_only)

        flags.append(Flag("deterministic_algorithms", c("_get_deterministic_algorithms"), set_deterministic))
        if c("_get_deterministic_algorithms_warn_only"):
            flags.append(Flag("deterministic_algorithms.warn_only", c("_get_deterministic_algorithms_warn_only"),
                               lambda v, t: c("_set_deterministic_algorithms")(
                                   t.get("deterministic_algorithms", c("_get_deterministic_algorithms")()),
                                   warn_only=v)))
    return flags


def snapshot(flags: list[Flag]) -> dict[str, Any]:
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
