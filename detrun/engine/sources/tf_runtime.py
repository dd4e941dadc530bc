"""TensorFlow and Keras: seeds, op seeds, `tf.random.Generator`, thread pools and op determinism.

Hooked the moment the script imports TensorFlow (detrun never imports it itself):
- op determinism (`tf.config.experimental.enable_op_determinism()`) in record and replay, unless
  the settings say `tf_op_determinism: false`; it also makes `tf.data` deterministic;
- the global seed: a script that sets none gets a recorded one injected before any op exists, so
  every unseeded stateful op (`tf.random.*`, `tf.nn.dropout`, `Dataset.shuffle`, the shuffle in
  `model.fit`) derives its op seed from it; `tf.random.set_seed(x)` and
  `keras.utils.set_random_seed(x)` are recorded whatever x is (the clock, say);
- `tf.random.Generator.from_non_deterministic_state()` (whose state comes from the OS inside a
  TF kernel, out of reach of the entropy source), `Generator.from_seed(x)` and the lazily created
  global generator (`tf.random.get_global_generator()`);
- intra-/inter-op thread pool sizes, pinned on replay before TensorFlow's runtime starts.

Keras 3 draws every unseeded initializer and `SeedGenerator` seed from Python's global `random`
(keras.src.random.seed_generator.make_default_seed) and runs its random ops statelessly, so the
Python `random` source already covers them; numpy draws (data adapters) are the numpy source's.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable

from detrun.engine.patcher import Patcher
from detrun.trace.registry import (  # the kinds, their payload schemas and versions
    KERAS_SEED as KERAS_SEED_KIND,
    TF_GENERATOR as GENERATOR_KIND,
    TF_GLOBAL_SEED as GLOBAL_SEED_KIND,
    TF_SEED as SEED_KIND,
    TF_THREADS as THREADS_KIND,
    TF_TIMESTAMP as TIMESTAMP_KIND,
)

if TYPE_CHECKING:
    from detrun.engine.session import Session


_SEED_API_NAMES = ("set_seed", "set_random_seed")
_GLOBAL_GENERATOR_NAME = "get_global_generator"


def _int_seed(seed: Any) -> int | None:
    """Return a seed as a plain int, or None when it is not one (let TF judge it as usual)."""
    if isinstance(seed, bool):
        return None
    if isinstance(seed, int):
        return seed
    try:
        value = seed.item() if hasattr(seed, "item") else seed  # numpy scalars, 0-d arrays
    except Exception:  # noqa: BLE001 - not a scalar
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _plain_seed(seed: Any) -> int | list[int] | None:
    """Return an int or a list of ints (a `Generator.from_seed` seed), or None."""
    single = _int_seed(seed)
    if single is not None:
        return single
    if hasattr(seed, "numpy"):
        try:
            seed = seed.numpy()
        except Exception:  # noqa: BLE001 - symbolic tensors have no value
            return None
    if hasattr(seed, "tolist"):
        seed = seed.tolist()
    if isinstance(seed, (list, tuple)) and seed and all(_int_seed(s) is not None for s in seed):
        return [int(_int_seed(s)) for s in seed]  # type: ignore[arg-type]
    return None


def _signed64(value: int) -> int:
    """Reinterpret 64 unsigned bits as an int64, the dtype of a generator's state."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _cpu_count() -> int:
    """Return the CPUs this process may run on, which TF's default pool sizes follow."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _api_modules(prefix: str) -> list[Any]:
    """Return the loaded modules of a package, where its public aliases of a function live."""
    return [module for name, module in list(sys.modules.items())
            if module is not None and (name == prefix or name.startswith(prefix + "."))]


class TensorFlowSource:
    """Hook TensorFlow's and Keras's seeding entry points as soon as they are imported."""

    def __init__(self) -> None:
        self._patcher = Patcher()
        self._installed = False
        self._tf_hooked = False
        self._keras_hooked = False
        self._undo_determinism: Callable[[], None] | None = None
        # Nested seeding calls (keras.utils.set_random_seed -> tf.random.set_seed -> set_random_seed)
        # exchange once, at the outermost call.
        self._local = threading.local()

    def install(self, session: Session) -> None:
        if self._installed:
            return
        self._installed = True
        session.when_imported("tensorflow", lambda tf: self._hook_tensorflow(session, tf))
        session.when_imported("keras", lambda keras: self._hook_keras(session, keras))

    def uninstall(self) -> None:
        self._installed = False
        self._patcher.undo()
        if self._undo_determinism is not None:
            self._undo_determinism()
            self._undo_determinism = None
        self._tf_hooked = self._keras_hooked = False

    # ------------------------------------------------------------------ helpers

    def _outermost(self) -> bool:
        return not getattr(self._local, "depth", 0)

    def _guarded(self, session: Session, where: str, body: Callable[[], Any], fallback: Any) -> Any:
        """Run body() with nested seeding calls passing straight through; on failure, report and fall back."""
        self._local.depth = getattr(self._local, "depth", 0) + 1
        try:
            return body()
        except Exception as exc:  # noqa: BLE001 - never change what the user's program does
            session.hook_failed(where, exc)
            return fallback
        finally:
            self._local.depth -= 1

    def _patch_aliases(self, prefix: str, original: Any, replacement: Any, names: tuple[str, ...]) -> None:
        """Replace every public alias of `original` under a package (tf.random.set_seed, tf.compat.v1...)."""
        for module in _api_modules(prefix):
            for name in names:
                try:
                    if module.__dict__.get(name) is original:
                        self._patcher.setattr(module, name, replacement)
                except Exception:  # noqa: BLE001 - odd lazy modules; skip them
                    continue

    # ------------------------------------------------------------------ TensorFlow

    def _hook_tensorflow(self, session: Session, tf: Any) -> None:
        if not self._installed or self._tf_hooked:
            return
        self._tf_hooked = True
        from tensorflow.python.eager import context  # type: ignore[import-not-found]
        from tensorflow.python.framework import config, random_seed  # type: ignore[import-not-found]

        self._pin_threads(session, context, config)
        if session.settings.get("tf_op_determinism", True) and not config.is_op_determinism_enabled():
            config.enable_op_determinism()
            self._undo_determinism = config.disable_op_determinism
        self._hook_seeds(session, context, random_seed)
        self._hook_generators(session)
        self._hook_timestamp(session, tf)

    def _pin_threads(self, session: Session, context: Any, config: Any) -> None:
        """Record the thread pool sizes; on replay set the recorded ones while TF still accepts them."""
        ctx = context.context()
        # The private fields, not the public properties: those build the ConfigProto, which
        # discovers the physical devices, and that must stay the script's business.
        configured = [getattr(ctx, "_intra_op_parallelism_threads", None),
                      getattr(ctx, "_inter_op_parallelism_threads", None)]
        # None or 0 means "TF picks": TF_NUM_*_THREADS, else the CPUs this process may use
        # (port::MaxParallelism).
        defaults = [os.environ.get("TF_NUM_INTRAOP_THREADS"), os.environ.get("TF_NUM_INTEROP_THREADS")]
        observed = [n or (int(d) if d and d.isdigit() and int(d) > 0 else _cpu_count())
                    for n, d in zip(configured, defaults)]
        if session.recording:
            session.emit(THREADS_KIND, observed)
            return
        recorded = session.take(THREADS_KIND)
        if not isinstance(recorded, list) or recorded == observed:
            return
        try:
            config.set_intra_op_parallelism_threads(recorded[0])
            config.set_inter_op_parallelism_threads(recorded[1])
        except RuntimeError:
            # The runtime already started (a library initialised it during import): say so.
            session.note_cause(f"TensorFlow threads recorded {recorded}, got {observed} and could not be pinned",
                               likely=True)

    def _hook_seeds(self, session: Session, context: Any, random_seed: Any) -> None:
        original_set_seed = random_seed.set_seed
        original_set_random_seed = random_seed.set_random_seed
        source = self

        def exchanged(seed: Any, what: str) -> Any:
            if not source._outermost():
                return seed
            value = _int_seed(seed)
            if seed is None:
                # set_seed(None) returns to unseeded ops, which op determinism refuses to run: hand
                # out a recorded seed instead, as at import.
                return source._guarded(session, what, lambda: session.exchange(
                    SEED_KIND, session.fresh_seed(31), what), seed)
            if value is None:
                return seed
            return source._guarded(session, what, lambda: session.exchange(SEED_KIND, value, what), seed)

        def call(original: Callable[[Any], Any], seed: Any) -> Any:
            self._local.depth = getattr(self._local, "depth", 0) + 1
            try:
                return original(seed)
            finally:
                self._local.depth -= 1

        # Mirrors tensorflow.python.framework.random_seed.set_seed (TF 2.x): the global seed, any value.
        def set_seed(seed: Any) -> Any:
            return call(original_set_seed, exchanged(seed, "tf.random.set_seed()"))

        # Mirrors random_seed.set_random_seed (TF 2.x, tf.compat.v1.set_random_seed): eager or graph seed.
        def set_random_seed(seed: Any) -> Any:
            return call(original_set_random_seed, exchanged(seed, "tf.compat.v1.set_random_seed()"))

        set_seed.__doc__ = original_set_seed.__doc__
        set_random_seed.__doc__ = original_set_random_seed.__doc__
        self._patch_aliases("tensorflow", original_set_seed, set_seed, _SEED_API_NAMES)
        self._patch_aliases("tensorflow", original_set_random_seed, set_random_seed, _SEED_API_NAMES)

        # No global seed means every unseeded op draws its own seed from the OS: inject a recorded
        # one now, before the script can create an op. An in-process block (detrun.api) finds the
        # seed and its op-seed counter wherever earlier code left them: it always sets one, which
        # also restarts the counter.
        if context.global_seed() is None or session.settings.get("in_process"):
            seed = session.exchange(GLOBAL_SEED_KIND, session.fresh_seed(31), "import tensorflow")
            call(original_set_seed, seed)

    def _hook_generators(self, session: Session) -> None:
        from tensorflow.python.framework import ops  # type: ignore[import-not-found]
        from tensorflow.python.ops import random_ops_util, stateful_random_ops  # type: ignore[import-not-found]

        generator = stateful_random_ops.Generator
        original_from_seed = generator.from_seed.__func__
        original_from_nds = generator.from_non_deterministic_state.__func__
        original_global = stateful_random_ops.get_global_generator

        # Mirrors Generator.from_non_deterministic_state (TF 2.x). The state normally comes from
        # the NonDeterministicInts kernel; here it is recorded instead, which also lets it run
        # under op determinism (where TF refuses it, since it could not be reproduced).
        def from_non_deterministic_state(cls: Any, alg: Any = None) -> Any:
            try:
                algorithm = random_ops_util.convert_alg_to_int(
                    stateful_random_ops.DEFAULT_ALGORITHM if alg is None else alg)
                size = stateful_random_ops._get_state_size(algorithm)  # noqa: SLF001
                state = session.exchange(
                    GENERATOR_KIND, [_signed64(session.fresh_seed(64)) for _ in range(size)],
                    "tf.random.Generator.from_non_deterministic_state()",
                    accept=lambda v: isinstance(v, list) and len(v) == size)
            except Exception as exc:  # noqa: BLE001
                session.hook_failed("tf.random.Generator.from_non_deterministic_state", exc)
                return original_from_nds(cls, alg)
            return cls(state=state, alg=algorithm)

        # Mirrors Generator.from_seed (TF 2.x): the seed may come from the clock.
        def from_seed(cls: Any, seed: Any, alg: Any = None) -> Any:
            plain = _plain_seed(seed)
            if plain is not None:
                try:
                    seed = session.exchange(SEED_KIND, plain, "tf.random.Generator.from_seed()")
                except Exception as exc:  # noqa: BLE001
                    session.hook_failed("tf.random.Generator.from_seed", exc)
            return original_from_seed(cls, seed, alg)

        # Mirrors stateful_random_ops.get_global_generator (TF 2.x): created on first use from a
        # recorded state, so that it also works under op determinism.
        def get_global_generator() -> Any:
            if stateful_random_ops.global_generator is None:
                with ops.init_scope():
                    stateful_random_ops.global_generator = generator.from_non_deterministic_state()
            return stateful_random_ops.global_generator

        from_non_deterministic_state.__doc__ = original_from_nds.__doc__
        from_seed.__doc__ = original_from_seed.__doc__
        get_global_generator.__doc__ = original_global.__doc__
        self._patcher.setattr(generator, "from_non_deterministic_state", classmethod(from_non_deterministic_state))
        self._patcher.setattr(generator, "from_seed", classmethod(from_seed))
        self._patch_aliases("tensorflow", original_global, get_global_generator, (_GLOBAL_GENERATOR_NAME,))

    def _hook_timestamp(self, session: Session, tf: Any) -> None:
        from tensorflow.python.ops import control_flow_util, gen_logging_ops  # type: ignore[import-not-found]

        original = gen_logging_ops.timestamp

        def now(what: str) -> float:
            import time

            try:
                return float(session.exchange(TIMESTAMP_KIND, time.time(), what,
                                              accept=lambda v: isinstance(v, float)))
            except Exception as exc:  # noqa: BLE001
                session.hook_failed("tf.timestamp", exc)
                return time.time()

        # Mirrors gen_logging_ops.timestamp (TF 2.x): the clock, which op determinism refuses
        # (FailedPreconditionError) and a replay must repeat; recorded here instead. Inside a
        # tf.function a py_function reads it at every execution; XLA cannot compile one, so there
        # the op stays.
        def timestamp(name: Any = None) -> Any:
            if tf.executing_eagerly():
                return tf.constant(now("tf.timestamp()"), dtype=tf.float64, name=name)
            if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
                return original(name=name)
            value = tf.py_function(lambda: tf.constant(now("tf.timestamp() in tf.function"), tf.float64),
                                   [], tf.float64, name=name)
            value.set_shape([])
            return value

        timestamp.__doc__ = original.__doc__
        self._patch_aliases("tensorflow", original, timestamp, ("timestamp",))

    # ------------------------------------------------------------------ Keras

    def _hook_keras(self, session: Session, keras: Any) -> None:
        if not self._installed or self._keras_hooked:
            return
        self._keras_hooked = True
        try:
            from keras.src.utils import rng_utils  # type: ignore[import-not-found]
        except ImportError:
            return  # Keras 2 (tf_keras layout): its set_random_seed reaches tf.random.set_seed, hooked above

        original = rng_utils.set_random_seed
        source = self

        # Mirrors keras.src.utils.rng_utils.set_random_seed (Keras 3): the value reaches Keras's
        # global state as well as random/numpy/TF, so it is exchanged once, here, for all of them.
        def set_random_seed(seed: Any) -> Any:
            value = _int_seed(seed)
            if value is not None and source._outermost() and not isinstance(seed, bool):
                seed = source._guarded(session, "keras.utils.set_random_seed",
                                       lambda: session.exchange(KERAS_SEED_KIND, value,
                                                                "keras.utils.set_random_seed()"), seed)
            source._local.depth = getattr(source._local, "depth", 0) + 1
            try:
                return original(seed)
            finally:
                source._local.depth -= 1

        set_random_seed.__doc__ = original.__doc__
        self._patch_aliases("keras", original, set_random_seed, ("set_random_seed",))
