"""Name an optimizer's parameters after the modules that own them ('encoder.fc.weight').

Names are found once per optimizer, at its first step. Scanning every object the garbage collector
tracks for modules costs 50-100 ms in a process that imported torch (10^5-10^6 objects): a few
percent of a short run, paid inside its first step. So while a session is installed, torch's
global registration hooks note which module a parameter or a submodule was registered into, and
naming climbs those notes from each parameter to its outermost module. Only parameters the notes
cannot name (modules built before the session, such as an in-process block's model) fall back to
the scan.
"""
from __future__ import annotations

import gc
import weakref
from typing import Any, Callable

_MAX_DEPTH = 64  # a module nesting deeper than this is named from the scan
_PRUNE_AT = 100_000  # notes kept before those of collected modules are dropped (a loop building modules)


class ModuleRegistry:
    """Remember, from torch's registration hooks, which module holds each parameter and submodule."""

    def __init__(self) -> None:
        # id(child) -> (weak reference to the holder, the child's name in it); validated on use,
        # since an id is reused once its object is gone.
        self._holders: dict[int, tuple[weakref.ref[Any], str]] = {}
        self._handles: list[Any] = []
        self._prune_at = _PRUNE_AT

    def install(self, torch: Any, on_error: Callable[[str, BaseException], None]) -> None:
        """Register the global parameter and submodule registration hooks (torch >= 2.0)."""
        if self._handles:
            return
        module = getattr(getattr(torch.nn, "modules", None), "module", None)
        for register in ("register_module_parameter_registration_hook", "register_module_module_registration_hook"):
            hook_setter = getattr(module, register, None)
            if hook_setter is not None:
                self._handles.append(hook_setter(self._noter(on_error)))

    def uninstall(self) -> None:
        """Remove the hooks and forget what they noted."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._holders.clear()

    def _noter(self, on_error: Callable[[str, BaseException], None]) -> Callable[[Any, str, Any], None]:
        holders = self._holders

        def note(holder: Any, name: str, child: Any) -> None:
            # Returns None: torch keeps the object being registered unchanged.
            if child is None:
                return
            try:
                holders[id(child)] = (weakref.ref(holder), name)
                if len(holders) > self._prune_at:
                    self._prune()
            except TypeError:  # a holder without weak references: the scan names its parameters
                pass
            except Exception as exc:  # noqa: BLE001 - never change what the user's program does
                on_error("noting parameter names", exc)

        return note

    def _prune(self) -> None:
        """Drop the notes of collected modules; keep the table's growth amortised."""
        for key in [key for key, (holder, _name) in self._holders.items() if holder() is None]:
            del self._holders[key]
        self._prune_at = max(_PRUNE_AT, 2 * len(self._holders))

    def name(self, param: Any) -> str | None:
        """Return the parameter's dotted name from its outermost noted module, or None if not noted."""
        parts: list[str] = []
        child, table = param, "_parameters"
        for _ in range(_MAX_DEPTH):
            noted = self._holders.get(id(child))
            holder = noted[0]() if noted is not None else None
            if holder is None or getattr(holder, table, {}).get(noted[1]) is not child:
                break
            parts.append(noted[1])
            child, table = holder, "_modules"
        else:
            return None
        return ".".join(reversed(parts)) if parts else None


def parameter_names(torch: Any, optimizer: Any, params: list[Any], registry: ModuleRegistry | None = None) -> list[str]:
    """Name parameters after the modules that own them, looked up once per optimizer."""
    by_id: dict[int, str] = {}
    for group in optimizer.param_groups:  # torch >= 2.6 keeps names when given named_parameters()
        for name, param in zip(group.get("param_names", ()), group["params"]):
            by_id[id(param)] = name
    if registry is not None:
        for param in params:
            if id(param) not in by_id and (name := registry.name(param)) is not None:
                by_id[id(param)] = name
    if len(by_id) < len(params):
        wanted = {id(p) for p in params}
        # Modules reachable from the garbage collector: the model the user built, wherever it lives.
        # type() rather than isinstance(): isinstance consults __class__, which some lazy module
        # proxies answer with a warning the user would see.
        module_type = torch.nn.Module
        modules = [obj for obj in gc.get_objects() if issubclass(type(obj), module_type)]
        # Prefer the outermost modules so names read 'encoder.fc.weight' rather than 'weight'.
        modules.sort(key=lambda m: -sum(1 for _ in m.modules()))
        for module in modules:
            for name, param in module.named_parameters():
                if id(param) in wanted and id(param) not in by_id:
                    by_id[id(param)] = name
            if len(by_id) >= len(params):
                break
    return [by_id.get(id(p), f"param[{i}]{tuple(p.shape)}") for i, p in enumerate(params)]
