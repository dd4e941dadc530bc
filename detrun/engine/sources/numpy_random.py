"""NumPy: the legacy global RandomState, `np.random.seed(x)`, and unseeded generators.

`RandomState()`, `SeedSequence()` and bit generators built without a seed draw their entropy
through `secrets.randbits`, which the entropy source records; this module owns the calls whose
seed a user passes (possibly from the clock) and `default_rng()`, the common entry point.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from detrun.engine.patcher import ImportTimeSource
from detrun.engine.sources.block_rng_state import found_imported
from detrun.trace.registry import (  # the kinds, their payload schemas and versions
    NP_DEFAULT_RNG as RNG_KIND,
    NP_SEED as SEED_KIND,
)

if TYPE_CHECKING:
    from detrun.engine.session import Session



def _plain_seed(seed: Any) -> Any:
    """Return a seed as msgpack-able data (ints and lists of ints), or raise TypeError."""
    if isinstance(seed, (bool, float, str, bytes)):
        raise TypeError("not an integer seed")
    if isinstance(seed, int):
        return seed
    if hasattr(seed, "tolist"):  # numpy arrays and numpy integer scalars
        seed = seed.tolist()
    if isinstance(seed, int):
        return seed
    if isinstance(seed, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in seed):
        return list(seed)
    raise TypeError("not an integer seed")


class NumpySource(ImportTimeSource):
    """Hook numpy's seeding entry points as soon as numpy is imported."""

    module = "numpy"

    def hook(self, session: Session, np: Any) -> None:
        mtrand = np.random.mtrand
        original_seed = mtrand.seed
        original_default_rng = np.random.default_rng

        # Mirrors numpy.random.mtrand.seed (numpy 1.17-2.x): the legacy global RandomState.
        def seed(seed: Any = None) -> None:
            value = seed
            try:
                try:
                    observed = [session.fresh_seed(32) for _ in range(4)] if seed is None else _plain_seed(seed)
                except TypeError:
                    observed = None  # not something we can store: let numpy accept or reject it as usual
                if observed is not None:
                    value = session.exchange(SEED_KIND, observed, "numpy.random.seed()")
            except Exception as exc:  # noqa: BLE001
                session.hook_failed("numpy.random.seed", exc)
            return original_seed(value)

        # Mirrors numpy.random.default_rng (numpy 1.17-2.x): only an absent seed is replaced.
        def default_rng(seed: Any = None) -> Any:
            if seed is None:
                try:
                    seed = session.exchange(RNG_KIND, session.fresh_seed(128), "numpy.random.default_rng()")
                except Exception as exc:  # noqa: BLE001
                    session.hook_failed("numpy.random.default_rng", exc)
            return original_default_rng(seed)

        seed.__doc__ = original_seed.__doc__
        default_rng.__doc__ = original_default_rng.__doc__
        self.patcher.setattr(mtrand, "seed", seed)
        self.patcher.setattr(np.random, "seed", seed)
        self.patcher.setattr(np.random, "default_rng", default_rng)
        # numpy seeded its global RandomState from OS entropy at import; reseed it through the hook
        # so that the recording holds the seed. In an in-process block that finds numpy imported,
        # the state is whatever earlier code left, and block_rng_state records it exactly.
        if not (session.settings.get("in_process") and found_imported(session, "numpy", self.imported_before)):
            np.random.seed()
