"""Deterministic drop-in kernels for aten ops that torch leaves nondeterministic or refuses in deterministic mode.

Nothing is installed on import, and importing this package does not import torch: the registry is built
on first use. A patch replaces torch's kernel at the dispatcher (``torch.library``), for the CUDA key by
default, so ``F.*``, ``nn`` modules and autograd backward all reach it without any change to the script.
"""
from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detrun.patches._core import Patch

__all__ = ["REGISTRY", "FAMILIES", "names", "patch_for_op", "install", "uninstall", "installed"]

# One module per op family; each exposes PATCHES, a tuple of Patch.
FAMILIES: tuple[str, ...] = (
    "pooling",
    "upsample",
    "grid_sample",
    "losses",
    "histogram",
    "indexing",
    "reductions",
    "padding",
    "embedding_bag",
)

_registry: dict[str, Patch] | None = None
_op_index: dict[str, str] = {}
_build_lock = threading.Lock()


def _build_registry() -> dict[str, Patch]:
    """Import every family module once and index its patches by name and by aten op."""
    global _registry
    with _build_lock:
        if _registry is None:
            registry: dict[str, Patch] = {}
            for family in FAMILIES:
                module = importlib.import_module(f"detrun.patches.{family}")
                for patch in module.PATCHES:
                    if patch.name in registry:
                        raise RuntimeError(f"duplicate patch name {patch.name!r}")
                    registry[patch.name] = patch
            for patch in registry.values():
                for op in (*patch.ops, *patch.related_ops):
                    _op_index.setdefault(_normalise_op(op), patch.name)
                    _op_index.setdefault(_normalise_op(op).split(".", 1)[0], patch.name)
            _registry = registry
    return _registry


def __getattr__(attribute: str) -> Any:
    """Build REGISTRY lazily so that ``import detrun.patches`` stays cheap."""
    if attribute == "REGISTRY":
        return _build_registry()
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def _normalise_op(op: str) -> str:
    """Map "aten::x", "aten::x.default", "aten.x.default" and "x" to "x" or "x.overload"."""
    text = op.strip()
    for prefix in ("aten::", "aten."):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    if text.endswith(".default"):
        text = text[: -len(".default")]
    return text


def names() -> list[str]:
    """Return the names of every known patch, sorted."""
    return sorted(_build_registry())


def patch_for_op(aten_op: str) -> str | None:
    """Return the name of the patch that covers ``aten_op`` ("aten::name" or "aten::name.overload"), or None."""
    _build_registry()
    op = _normalise_op(aten_op)
    # An exact overload match wins; otherwise the op packet ("median" for "median.dim") decides.
    return _op_index.get(op) or _op_index.get(op.split(".", 1)[0])


def install(names: list[str] | tuple[str, ...] | set[str] | None = None, dispatch_key: str = "CUDA") -> list[str]:
    """Install the named patches (all when None) for ``dispatch_key``; return the names now installed."""
    registry = _build_registry()
    wanted = sorted(registry) if names is None else sorted(set(names))
    unknown = [name for name in wanted if name not in registry]
    if unknown:
        raise KeyError(f"unknown patch(es): {', '.join(unknown)}; known: {', '.join(sorted(registry))}")
    return [name for name in wanted if registry[name].install(dispatch_key)]


def uninstall() -> None:
    """Remove every installed patch for every dispatch key; torch's own kernels are current again."""
    from detrun.patches._core import installed_keys

    registry = _build_registry()
    for name, key in installed_keys():
        registry[name].uninstall(key)


def installed() -> list[tuple[str, str]]:
    """Return (patch name, dispatch key) for every patch now installed."""
    from detrun.patches._core import installed_keys

    return installed_keys()
