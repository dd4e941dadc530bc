"""The global generators' states when an in-process block starts (`with detrun.record(...)`).

A script run by `detrun record` starts with generators that Python, numpy and torch seeded at
import, and the other sources record those seeds. A `with` block in a notebook or a test finds
the generators wherever earlier code left them — seeded by the user (`torch.manual_seed(0)`) or
advanced by earlier cells. Reseeding them would change what the block computes, so this source
records their exact states instead and a replay restores them:

    `block.rng_states` — {"python": [version, 625 words, gauss_next], "numpy": [624 words, pos,
    has_gauss, cached_gaussian], "torch": CPU generator state, "cuda": [state per device]}

Only generators of libraries already imported are included; one imported inside the block starts
from its import-time seed, which its own source records as in a script.
"""
from __future__ import annotations

import struct
import sys
from typing import TYPE_CHECKING, Any

from detrun.engine.session import MISSING
from detrun.trace.registry import BLOCK_RNG_STATES as KIND  # the kind, its payload schema and version

if TYPE_CHECKING:
    from detrun.engine.session import Session

_PY_WORDS = 625  # random.getstate()'s Mersenne Twister words, the last one the position
_NP_WORDS = 624


class BlockRngStateSource:
    """Record the global generators' states at the start of an in-process block; restore them on replay."""

    def __init__(self) -> None:
        self._done = False

    def install(self, session: Session) -> None:
        if self._done:
            return
        self._done = True
        try:
            if session.recording:
                session.emit(KIND, _capture())
                return
            recorded = session.take(KIND)
            if recorded is not MISSING:
                _restore(recorded)
        except Exception as exc:  # noqa: BLE001 - a failure is reported and lowers the verdict
            session.hook_failed("the generator states at the start of the block", exc)

    def uninstall(self) -> None:
        """Nothing to undo: the states set belong to the replayed run, as every value fed back does."""


def found_imported(session: Session, module_name: str, imported_before: bool) -> bool:
    """Return whether the block found a library imported: this process's answer when recording, the recording's on replay.

    A replay in the recording's own process (`detrun.check(fn)` where fn imports torch) finds the
    library imported although the recorded block did not: it must then replay the import-time
    seeds, as the recording made them, rather than rely on states that were never recorded.
    """
    if session.recording:
        return imported_before
    recorded = session.recorded(KIND)
    return bool(recorded) and isinstance(recorded[0], dict) and module_name in recorded[0]


def _capture() -> dict[str, Any]:
    """Return the states of the global generators of the libraries imported so far."""
    import random

    version, words, gauss_next = random.getstate()
    states: dict[str, Any] = {"python": [version, struct.pack(f"<{_PY_WORDS}I", *words), gauss_next]}
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        _name, keys, pos, has_gauss, cached = numpy.random.get_state(legacy=True)
        states["numpy"] = [keys.astype("<u4").tobytes(), int(pos), int(has_gauss), float(cached)]
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_rng_state"):
        states["torch"] = bytes(torch.get_rng_state().numpy().tobytes())
        if torch.cuda.is_initialized():
            states["cuda"] = [bytes(s.numpy().tobytes()) for s in torch.cuda.get_rng_state_all()]
    return states


def _restore(states: dict[str, Any]) -> None:
    """Set the global generators to the recorded states (validated by the registry's schema)."""
    import importlib
    import random

    # A library the recording had imported before the block is imported now, so that the sources
    # watching imports see the same start as the recording did.
    for name in ("numpy", "torch"):
        if name in states and name not in sys.modules:
            importlib.import_module(name)
    version, words, gauss_next = states["python"]
    random.setstate((version, struct.unpack(f"<{_PY_WORDS}I", words), gauss_next))
    numpy = sys.modules.get("numpy")
    if numpy is not None and "numpy" in states:
        keys, pos, has_gauss, cached = states["numpy"]
        numpy.random.set_state(("MT19937", numpy.frombuffer(keys, dtype="<u4").astype(numpy.uint32),
                                pos, has_gauss, cached))
    torch = sys.modules.get("torch")
    if torch is not None and "torch" in states:
        torch.set_rng_state(torch.frombuffer(bytearray(states["torch"]), dtype=torch.uint8))
        if "cuda" in states and torch.cuda.is_initialized() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in states["cuda"]])
