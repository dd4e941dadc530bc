"""Python's `random`: the global generator's seed, `random.seed(x)` for any x, and `Random()` instances."""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from detrun.engine.compiler_frames import inside_compiler
from detrun.engine.patcher import Patcher
from detrun.trace.registry import PY_SEED as KIND  # the kind, its payload schema and version

if TYPE_CHECKING:
    from detrun.engine.session import Session

_SEED_TYPES = (int, float, str, bytes)


class PyRandomSource:
    """Record every seed that reaches `random.Random.seed`, and feed it back on replay."""

    def __init__(self) -> None:
        self._patcher = Patcher()

    def install(self, session: Session) -> None:
        if self._patcher.active:
            return
        original_seed = random.Random.seed

        # Mirrors random.Random.seed (CPython 3.10-3.13): `Random(x)` and the module-level
        # `random.seed` both end here, and SystemRandom overrides seed, so it never does.
        def seed(self: random.Random, a: Any = None, version: int = 2) -> None:
            if inside_compiler(skip=1):
                # A compiler's private generators name temporary files; whether they are made at
                # all depends on its cache, so they are left to the OS.
                return original_seed(self, a, version)
            value = a
            try:
                if a is None:
                    observed: Any = session.fresh_seed(64)
                elif isinstance(a, bytearray):
                    observed = bytes(a)
                else:
                    observed = a
                if isinstance(observed, _SEED_TYPES):
                    value = session.exchange(KIND, observed, "random.seed()",
                                             accept=lambda v: isinstance(v, _SEED_TYPES))
            except Exception as exc:  # noqa: BLE001
                session.hook_failed("random.seed", exc)
            return original_seed(self, value, version)

        self._patcher.setattr(random.Random, "seed", seed)
        # The module-level function is a method bound at import time; rebind it to the hook.
        self._patcher.setattr(random, "seed", random._inst.seed)  # type: ignore[attr-defined]
        # Python seeded the global generator from OS entropy at import; reseed it through the hook
        # so that the recording holds its seed. An in-process block finds it wherever earlier code
        # left it, and block_rng_state records that state exactly instead.
        if not session.settings.get("in_process"):
            random.seed()

    def uninstall(self) -> None:
        self._patcher.undo()
