"""The final state: a digest of everything the run trained, taken when each piece dies or at exit.

Per-step digests only see parameters that a `torch.optim` optimizer steps. Training by hand
(`w -= lr * g`), Keras on the torch backend, or a model that never meets an optimizer would go
unchecked, so this source digests the training state itself:

- every `torch.nn.Module` and `torch.optim.Optimizer`, registered when it is constructed (the
  hooked `__init__` of the base classes). Each one's own tensors (parameters and buffers; optimizer
  state) are digested when it is garbage-collected — a model local to `main()` dies before the
  script ends — or at exit if it is still alive. The finalizer holds the module's `_parameters` and
  `_buffers` dicts, never the module, so nothing lives longer than it would without detrun;
- weights (leaf tensors that require grad) and numpy arrays held in `__main__`'s globals, by name
  (not for an in-process block: there `__main__` is the notebook's or the test runner's);
- the global RNG states of Python's `random`, numpy and torch.

Items are keyed by construction order, which a reproduced run repeats exactly, so the order in
which objects die does not matter. One event at the end of the run:

    `final.state` — {"items": [[key, digest, label], ...]}

On replay each item is compared; the first that differs is a DIVERGED naming the object.
"""
from __future__ import annotations

import random
import sys
import threading
import weakref
import zlib
from typing import TYPE_CHECKING, Any, Callable, Sequence

from detrun.engine.compiler_frames import inside_compiler
from detrun.engine.digests import fold, tensor_word_sum
from detrun.engine.patcher import Patcher
from detrun.trace.registry import FINAL_STATE as KIND  # the kind, its payload schema and version

if TYPE_CHECKING:
    from detrun.engine.session import Session

_MAX_ITEMS = 100_000  # beyond this many objects only the count is compared (a pathological script)


class FinalStateSource:
    """Digest every model, optimizer and RNG the run used, once, at its death or at exit."""

    def __init__(self) -> None:
        self._patcher = Patcher()
        self._session: Session | None = None
        self._torch: Any = None
        self._active = False
        # Re-entrant: a collection can run _died in the middle of _register on the same thread.
        self._lock = threading.RLock()
        self._next_index = 0
        # index -> (key, weakref or None once dead, digest or None while alive, label)
        self._items: dict[int, tuple[str, Any, int | None, str]] = {}
        self._finalizers: list[weakref.finalize] = []
        # optimizer -> the list of dicts its finalizer digests: load_state_dict() replaces `state`
        # with a new dict (Optimizer.__setstate__), and a resumed run must digest that one.
        self._held: weakref.WeakKeyDictionary[Any, list[dict[Any, Any]]] = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------ install / uninstall

    def install(self, session: Session) -> None:
        if self._session is not None:
            return
        self._session = session
        self._active = True
        session.when_imported("torch", self._hook_torch)
        session.on_stop(self._finish)

    def uninstall(self) -> None:
        self._active = False
        self._patcher.undo()
        for finalizer in self._finalizers:
            finalizer.detach()
        self._finalizers.clear()
        self._session = None

    def _hook_torch(self, torch: Any) -> None:
        if self._torch is not None or not self._active:
            return
        self._torch = torch
        self._patch_init(torch.nn.Module, "module", lambda m: (m._parameters, m._buffers))
        self._patch_init(torch.optim.Optimizer, "optimizer", lambda o: (o.state,))
        self._patch_setstate(torch.optim.Optimizer)

    def _patch_init(self, cls: type, what: str, holdings: Callable[[Any], tuple[dict[Any, Any], ...]]) -> None:
        original = cls.__init__  # type: ignore[misc]
        source = self

        # Mirrors torch.nn.Module.__init__ / torch.optim.Optimizer.__init__ (torch 2.x): the base
        # initialisers every subclass reaches through super().__init__().
        def __init__(obj: Any, *args: Any, **kwargs: Any) -> None:
            original(obj, *args, **kwargs)
            # A compiler's helper modules depend on its cache (cold: built; warm: loaded), not on
            # the program, and hold no trained state of their own.
            if source._active and not inside_compiler(skip=1):
                try:
                    source._register(obj, what, holdings(obj))
                except Exception as exc:  # noqa: BLE001 - never change what the program does
                    source._failed(exc)

        __init__.__doc__ = original.__doc__
        __init__.__wrapped__ = original  # type: ignore[attr-defined]
        self._patcher.setattr(cls, "__init__", __init__)

    def _patch_setstate(self, cls: type) -> None:
        original = cls.__setstate__  # type: ignore[attr-defined]
        source = self

        # Mirrors torch.optim.Optimizer.__setstate__ (torch 2.x), which load_state_dict() calls with a
        # new `state` dict, and every subclass's __setstate__ reaches through super().
        def __setstate__(obj: Any, state: dict[str, Any]) -> None:
            original(obj, state)
            try:
                held = source._held.get(obj) if getattr(type(obj), "__hash__", None) is not None else None
                if held is not None:
                    held[:] = [obj.state]
            except Exception as exc:  # noqa: BLE001 - never change what the program does
                source._failed(exc)

        __setstate__.__doc__ = original.__doc__
        __setstate__.__wrapped__ = original  # type: ignore[attr-defined]
        self._patcher.setattr(cls, "__setstate__", __setstate__)

    # ------------------------------------------------------------ registration and death

    def _register(self, obj: Any, what: str, holdings: tuple[dict[Any, Any], ...]) -> None:
        held = list(holdings)  # a list, so that a load_state_dict() can point it at the new state
        with self._lock:
            index = self._next_index
            self._next_index += 1
            if index >= _MAX_ITEMS:
                return
            name = type(obj).__qualname__
            self._items[index] = (f"{what}#{index}:{name}", weakref.ref(obj), None, f"{what} #{index} ({name})")
        if what == "optimizer":
            try:
                self._held[obj] = held
            except TypeError:  # a subclass with __eq__ but no __hash__: its reloaded state goes unseen
                pass
        finalizer = weakref.finalize(obj, self._died, index, held)
        finalizer.atexit = False  # at exit the session is gone; _finish digests what is still alive
        self._finalizers.append(finalizer)

    def _died(self, index: int, held: list[dict[Any, Any]]) -> None:
        """Digest an object's tensors as it is collected (runs inside the garbage collector)."""
        if not self._active:
            return
        try:
            digest = self._digest_holdings(held)
            with self._lock:
                key, _ref, _old, label = self._items[index]
                self._items[index] = (key, None, digest, label)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)

    def _digest_holdings(self, held: Sequence[dict[Any, Any]]) -> int:
        """Return one digest over the tensors and plain values in an object's own dicts."""
        sums: list[int] = []
        for mapping in held:
            for value in list(mapping.values()):
                sums.extend(self._value_sums(value))
        return fold(sums)

    def _value_sums(self, value: Any) -> list[int]:
        """Return 64-bit sums for a tensor, a dict of tensors (optimizer state) or a plain number."""
        torch = self._torch
        if value is None:
            return [0]
        if isinstance(value, torch.Tensor):
            if value.is_meta or value.layout != torch.strided:
                return [1]
            return [tensor_word_sum(torch, value)]
        if isinstance(value, dict):
            return [s for key in sorted(value, key=str) for s in self._value_sums(value[key])]
        if isinstance(value, (int, float, bool, str)):
            return [zlib.crc32(repr(value).encode())]
        return [2]

    # ------------------------------------------------------------ the end of the run

    def _finish(self) -> None:
        session = self._session
        if session is None:
            return
        try:
            items = self._collect()
        except Exception as exc:  # noqa: BLE001 - an odd object must not cost the rest of the verdict
            self._failed(exc)
            return
        if session.recording:
            session.emit(KIND, {"items": items})
            return
        recorded = session.take(KIND)
        if not isinstance(recorded, dict) or not isinstance(recorded.get("items"), list):
            return  # an incomplete recording ended before its final state
        # The RNG states alone are not training state: a script without a model stays UNVERIFIED.
        if any(not str(item[0]).startswith("rng:") for item in items):
            session.count_check("final state")
        if getattr(session, "interrupt_delivered", False):
            # Draws inside the interrupted step cannot be placed exactly (see interrupts.py).
            recorded_items = [i for i in recorded["items"] if not str(i[0]).startswith("rng:")]
            items = [i for i in items if not str(i[0]).startswith("rng:")]
        else:
            recorded_items = recorded["items"]
        if session.settings.get("in_process"):
            recorded_items, items = _shared_cuda_rng(recorded_items, items)
        message = _first_difference(recorded_items, items)
        if message is not None:
            session.diverge(KIND, f"at exit, {message}", step=session.steps or None)

    def _collect(self) -> list[list[Any]]:
        """Return [key, digest, label] for every registered object, the globals and the RNGs."""
        names = self._module_names()
        items: list[list[Any]] = []
        with self._lock:
            entries = sorted(self._items.items())
        for index, (key, ref, digest, label) in entries:
            obj = ref() if ref is not None else None
            if obj is not None:
                held = (obj._parameters, obj._buffers) if key.startswith("module") else (obj.state,)
                digest = self._digest_holdings(held)
                name = names.get(id(obj))
                if name is not None and name != type(obj).__qualname__:
                    label = f"{label[:-1]}, {name})"
            items.append([key, digest, label])
        if self._next_index > _MAX_ITEMS:
            items.append(["count", self._next_index, "the number of models and optimizers"])
        items.extend(self._globals())
        items.extend(_rng_states())
        return items

    def _module_names(self) -> dict[int, str]:
        """Name live modules by their path in the outermost live module ('Net.encoder.fc')."""
        names: dict[int, str] = {}
        alive = [ref() for _key, ref, _d, _l in self._items.values() if ref is not None]
        modules = [m for m in alive if m is not None and hasattr(m, "named_modules")]
        modules.sort(key=lambda m: -sum(1 for _ in m.modules()))
        for root in modules:
            if id(root) in names:
                continue
            prefix = type(root).__qualname__
            for path, child in root.named_modules():
                names.setdefault(id(child), f"{prefix}.{path}" if path else prefix)
        return names

    def _globals(self) -> list[list[Any]]:
        """Return items for the weights (leaf tensors that require grad) and numpy arrays in __main__'s globals."""
        if self._session is not None and self._session.settings.get("in_process"):
            # In-process, __main__ is the notebook's or pytest's: its globals change between a
            # recording and its replay for reasons that are not the training's.
            return []
        main = sys.modules.get("__main__")
        numpy = sys.modules.get("numpy")
        torch = self._torch
        items = []
        for name, value in sorted(vars(main).items() if main is not None else []):
            if torch is not None and isinstance(value, torch.Tensor) and value.requires_grad and value.is_leaf:
                items.append([f"global:{name}", fold(self._value_sums(value)), f"tensor '{name}'"])
            elif numpy is not None and isinstance(value, numpy.ndarray) and value.dtype != object:
                data = numpy.ascontiguousarray(value).view(numpy.uint8).tobytes()
                items.append([f"global:{name}", zlib.crc32(data), f"numpy array '{name}'"])
        return items

    def _failed(self, exc: BaseException) -> None:
        if self._session is not None:
            self._session.hook_failed("the final-state digest", exc)


def _rng_states() -> list[list[Any]]:
    """Return items for the global RNG states of Python, numpy and torch (those the script imported)."""
    items = [["rng:python", zlib.crc32(repr(random.getstate()).encode()), "Python's global random state"]]
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        _name, keys, pos, has_gauss, cached = numpy.random.get_state()
        items.append(["rng:numpy", zlib.crc32(keys.tobytes() + repr((pos, has_gauss, cached)).encode()),
                      "numpy's global random state"])
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_rng_state"):
        items.append(["rng:torch", zlib.crc32(torch.get_rng_state().numpy().tobytes()), "torch's CPU random state"])
        cuda = getattr(torch, "cuda", None)
        if cuda is not None and cuda.is_initialized():
            states = b"".join(s.cpu().numpy().tobytes() for s in cuda.get_rng_state_all())
            items.append(["rng:cuda", zlib.crc32(states), "torch's CUDA random states"])
    return items


def _shared_cuda_rng(recorded: list[Any], got: list[list[Any]]) -> tuple[list[Any], list[list[Any]]]:
    """Drop the CUDA generators' item unless both sides have it (an in-process block).

    CUDA can start outside the block, in another cell, between a recording and its replay; its
    generators then exist at only one end, which says nothing about the training. When both ends
    had CUDA running, the states are compared as usual.
    """
    def has(items: list[Any]) -> bool:
        return any(isinstance(item, list) and item and item[0] == "rng:cuda" for item in items)

    if has(recorded) and has(got):
        return recorded, got
    return ([i for i in recorded if not (isinstance(i, list) and i and i[0] == "rng:cuda")],
            [i for i in got if i[0] != "rng:cuda"])


def _first_difference(recorded: list[Any], got: list[list[Any]]) -> str | None:
    """Name the first item whose digest differs, or that only one side has."""
    now = {item[0]: item for item in got}
    for item in recorded:
        if not isinstance(item, list) or len(item) != 3:
            continue
        key, digest, label = item
        current = now.pop(key, None)
        if current is None:
            return f"{label} is missing from the replay"
        if current[1] != digest:
            shown = current[2] if len(str(current[2])) >= len(str(label)) else label
            return f"{shown} differs (digest recorded {digest:08x}, got {current[1]:08x})" if isinstance(
                digest, int) and isinstance(current[1], int) else f"{shown} differs"
    if now:
        first = next(iter(now.values()))
        return f"{first[2]} is not in the recording ({len(now)} object(s) more than recorded)"
    return None
