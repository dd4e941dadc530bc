"""Determinism policies: the torch flags plus the patches that ``detrun record`` / ``replay`` apply.

Call ``apply_policy`` right after torch is imported and before anything touches CUDA: cuBLAS reads
``CUBLAS_WORKSPACE_CONFIG`` once, when the first handle is created, so setting it later has no effect
(the returned dict says so in ``cublas_workspace_config_effective``).
"""
from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

POLICIES = ("strict", "minimal")
CUBLAS_WORKSPACE_CONFIG = ":4096:8"

_NOTSET = object()
_saved: dict[str, Any] | None = None
_lock = threading.Lock()


def apply_policy(name: str = "strict", only_ops: set[str] | None = None, *,
                 fill_uninitialized_memory: bool = True) -> dict[str, Any]:
    """Turn on deterministic torch and install patches (all for "strict", those covering ``only_ops`` for "minimal").

    ``fill_uninitialized_memory=False`` leaves torch's fill of uninitialised memory off; a detrun
    session passes it and turns the fill on when the program asks for such memory.
    """
    import torch

    import detrun.patches as patches

    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    with _lock:
        if _saved is not None:
            _remove_policy_locked()
        cuda_initialised = bool(torch.cuda.is_initialized())
        saved: dict[str, Any] = {
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cublas_env": os.environ.get("CUBLAS_WORKSPACE_CONFIG", _NOTSET),
            "fill_uninitialized": _fill_uninitialized(torch),
        }
        # Must precede CUDA initialisation: cuBLAS reads it when its first handle is created.
        if saved["cublas_env"] is _NOTSET:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG
        saved["inductor_env"] = os.environ.get(_INDUCTOR_ENV, _NOTSET)
        _set_deterministic_algorithms(torch, True)
        # A session keeps it off until the program itself asks for uninitialised memory: filling
        # every torch.empty cost 15% of a GPT-style step on an H200 (benchmarks/results/gpu_nvidia_h200.md).
        _set_fill_uninitialized(torch, fill_uninitialized_memory)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        if name == "strict":
            wanted = patches.names()
            requested_ops: list[str] = []
        else:
            requested_ops = sorted(only_ops or ())
            wanted = sorted({p for p in (patches.patch_for_op(op) for op in requested_ops) if p is not None})
        installed = patches.install(wanted, dispatch_key="CUDA")
        saved["patches"] = installed
        _set_saved(saved)
    return {
        "policy": name,
        "patches": list(installed),
        "patches_skipped": sorted(set(wanted) - set(installed)),
        "requested_ops": requested_ops,
        "unpatched_ops": sorted(op for op in requested_ops if patches.patch_for_op(op) is None),
        "dispatch_key": "CUDA",
        "flags": {
            "use_deterministic_algorithms": True,
            "cudnn_benchmark": False,
            "cudnn_deterministic": True,
            "CUBLAS_WORKSPACE_CONFIG": os.environ["CUBLAS_WORKSPACE_CONFIG"],
            "fill_uninitialized_memory": True if fill_uninitialized_memory else "when the program calls torch.empty*",
        },
        "cublas_workspace_config_effective": not cuda_initialised,
        "torch": torch.__version__,
    }


def remove_policy() -> None:
    """Restore every flag apply_policy changed and uninstall the patches it installed."""
    with _lock:
        _remove_policy_locked()


def _remove_policy_locked() -> None:
    """Undo the active policy; the caller holds the lock."""
    global _saved
    if _saved is None:
        return
    import torch

    import detrun.patches as patches

    saved, _saved = _saved, None
    for name in saved["patches"]:
        patches.REGISTRY[name].uninstall("CUDA")
    _set_deterministic_algorithms(torch, saved["deterministic"], warn_only=saved["warn_only"])
    _set_fill_uninitialized(torch, saved["fill_uninitialized"])
    if saved["inductor_env"] is _NOTSET:
        os.environ.pop(_INDUCTOR_ENV, None)
    else:
        os.environ[_INDUCTOR_ENV] = saved["inductor_env"]
    torch.backends.cudnn.benchmark = saved["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = saved["cudnn_deterministic"]
    if saved["cublas_env"] is _NOTSET:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved["cublas_env"]


_INDUCTOR_ENV = "TORCHINDUCTOR_DETERMINISTIC"


def _set_deterministic_algorithms(torch: Any, mode: bool, warn_only: bool = False) -> None:
    """Set deterministic mode as torch.use_deterministic_algorithms does, without its import cost.

    Mirrors torch.use_deterministic_algorithms (torch 2.13): it imports torch._inductor.config to
    set `deterministic` there, which imports dynamo and costs ~1.8 s on CPU at every start. The
    inductor flag is set directly when inductor is already loaded, and otherwise through the
    environment variable its config reads when it is imported.
    """
    config = sys.modules.get("torch._inductor.config")
    if config is not None:
        config.deterministic = mode
    else:
        os.environ[_INDUCTOR_ENV] = "1" if mode else "0"
    torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)


def _fill_uninitialized(torch: Any) -> bool | None:
    """Return torch.utils.deterministic.fill_uninitialized_memory (None on a torch without it)."""
    getter = getattr(torch._C, "_get_deterministic_fill_uninitialized_memory", None)
    return bool(getter()) if getter is not None else None


def _set_fill_uninitialized(torch: Any, value: bool | None) -> None:
    """Set torch.utils.deterministic.fill_uninitialized_memory, where this torch has it."""
    setter = getattr(torch._C, "_set_deterministic_fill_uninitialized_memory", None)
    if setter is not None and value is not None:
        setter(value)


def _set_saved(saved: dict[str, Any]) -> None:
    """Remember what apply_policy replaced."""
    global _saved
    _saved = saved


FLAG_FIELDS = ("nondeterministic_cuda", "raises_in_det_mode", "measured_nondeterministic", "nondeterministic")
FLAGGED_SEVERITIES = ("raises", "nondeterministic", "measured")


def load_profile_ops(path: str | os.PathLike[str]) -> set[str]:
    """Return the aten ops a ``detrun profile --json`` report flags (see detrun/profiler/SCHEMA.md).

    An op counts when any of nondeterministic_cuda, raises_in_det_mode, measured_nondeterministic
    or nondeterministic is true, or its severity is raises / nondeterministic / measured. Leniency:
    a bare list, plain strings, "name" instead of "op", and entries with none of those fields (taken
    as flagged) are accepted; entries without an op name are skipped.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    entries = data.get("ops", []) if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list under 'ops'")
    ops: set[str] = set()
    for entry in entries:
        if isinstance(entry, str):
            ops.add(entry)
            continue
        if not isinstance(entry, dict):
            continue
        op = entry.get("op") or entry.get("name") or entry.get("aten_op")
        if not isinstance(op, str) or not op:
            continue
        known = [entry[field] for field in FLAG_FIELDS if field in entry] + (
            [entry["severity"] in FLAGGED_SEVERITIES] if "severity" in entry else []
        )
        if not known or any(value is True for value in known):
            ops.add(op)
    return ops
