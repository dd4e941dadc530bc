"""Per-step digests for TensorFlow/Keras: the same events, digests and verdict as torch's steps.

One `tf.step` event per training step, with torch's payload `[optimizer_index, loss, digest,
lanes]` (see detrun.engine.sources.torch_steps). Two hooks find the steps, since in Keras 3 the optimizer's
Python code runs once, while `model.fit`'s train_step is being traced, not once per step:
- `model.fit`/`train_on_batch`: `TensorFlowTrainer.make_train_function` is wrapped so that the
  train function it builds (called from Python once per step, or per `steps_per_execution`
  steps) digests the model's variables after each call; the loss is the `loss` entry of the
  logs it returns (Keras's running mean of the epoch, exact bits);
- custom `tf.GradientTape` loops: `Optimizer.apply` (which `apply_gradients` calls) is wrapped.
  In eager code the digest is taken right after it; inside a `tf.function` a `tf.py_function`
  is placed after the update, fed with the variables read after it (automatic control
  dependencies order those reads after the writes), so the digest runs at every execution of
  the graph. The loss is the target of the last `GradientTape.gradient` call.

Each variable gets a 32-bit digest: from one tf.function that reads all the variables at once
(eager code and `model.fit`), or crc32 of the values handed to the py_function (inside a
tf.function). The step digest, the attribution lanes and the messages are then torch's.
"""
from __future__ import annotations

import functools
import threading
import zlib
from typing import TYPE_CHECKING, Any, Callable

from detrun.engine.patcher import Patcher
from detrun.engine.sources.torch_steps import record_or_check_step
from detrun.engine.step_clock import Tick
from detrun.trace.registry import TF_STEP as KIND  # the kind, its payload schema and version

if TYPE_CHECKING:
    from detrun.engine.session import Session

_WRAPPED = "__detrun_step_digest__"


def _variable_name(variable: Any, index: int) -> str:
    """Return a variable's Keras path ('sequential/conv/kernel') or TF name without ':0'."""
    for attribute in ("path", "name"):
        name = getattr(variable, attribute, None)
        if isinstance(name, str) and name:
            return name[:-2] if name.endswith(":0") else name
    return f"variable[{index}]"


def _crc(array: Any) -> int:
    """Return crc32 of an array's bytes (numpy)."""
    import numpy as np

    array = np.ascontiguousarray(array)
    return zlib.crc32(array.reshape(-1).view(np.uint8))


def _digest_function(tf: Any, variables: list[Any]) -> Callable[[], Any]:
    """Build one tf.function returning a 64-bit digest per variable, so a step costs one call.

    Reading variables one by one from Python costs two eager ops each (~0.2 ms per variable);
    this reads them all in one graph of four ops per variable. Each digest is the int64 sum of
    the variable's bit patterns, as torch's CUDA digest: exact, and the same whatever order the
    reduction runs in (a pure permutation of one variable's values would go unnoticed, but the
    loss is checked at every step too).
    """
    bits_of = {1: tf.uint8, 2: tf.int16, 4: tf.int32, 8: tf.int64}

    def digest() -> Any:
        sums = []
        for variable in variables:
            value = tf.convert_to_tensor(variable)
            if value.dtype.is_bool:
                bits = tf.cast(value, tf.int64)
            else:
                bits = tf.cast(tf.bitcast(value, bits_of[min(value.dtype.size, 8)]), tf.int64)
            sums.append(tf.reduce_sum(bits))
        return tf.stack(sums) if sums else tf.zeros([0], tf.int64)

    return tf.function(digest, autograph=False)


def _fold(values: Any) -> list[int]:
    """Fold 64-bit digests to the 32 bits a step event keeps per variable."""
    return [(int(v) ^ (int(v) >> 32)) & 0xFFFFFFFF for v in values]


def _scalar(value: Any) -> float | None:
    """Return a scalar tensor's value as a float (exact for f16/bf16/f32), or None."""
    if value is None:
        return None
    try:
        import numpy as np

        array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        numeric = array.dtype.kind in "fiu" or "float" in str(array.dtype)  # bfloat16 is kind 'V'
        if array.size != 1 or not numeric:
            return None
        return float(array.reshape(()))
    except Exception:  # noqa: BLE001 - not a concrete scalar
        return None


class TFStepVerifier:
    """Record or check a digest at every training step of a TensorFlow/Keras run."""

    def __init__(self) -> None:
        self._session: Session | None = None
        self._patcher = Patcher()
        self._local = threading.local()
        self._indices: dict[int, int] = {}
        self._keepalive: list[Any] = []  # owners of the indices above, so their ids stay unique
        self._model_variables: dict[int, tuple[list[str], Callable[[], Any]]] = {}
        self._eager_digests: dict[tuple[int, ...], Callable[[], Any]] = {}
        self._digest_every = 1
        self._lock = threading.Lock()
        self._pending: tuple[int, float | None, list[str], Callable[[], list[int]]] | None = None

    # ------------------------------------------------------------ install / uninstall

    def install(self, session: Session) -> None:
        if self._session is not None:
            return
        self._session = session
        self._digest_every = max(1, int(session.settings.get("digest_every", 1)))
        session.clock.subscribe("digests", self._on_tick, "the TensorFlow step digest", framework="tensorflow")
        session.when_imported("tensorflow", self._hook_tensorflow)
        session.when_imported("keras", self._hook_keras)

    def uninstall(self) -> None:
        self._patcher.undo()
        if self._session is not None:
            self._session.clock.unsubscribe(self._on_tick)
        self._session = None

    def _hook_tensorflow(self, tf: Any) -> None:
        if self._session is None:
            return
        from tensorflow.python.eager import backprop  # type: ignore[import-not-found]

        original = backprop.GradientTape.gradient
        local = self._local

        # Mirrors tf.GradientTape.gradient (TF 2.x): remember the target, the loss of the step.
        def gradient(tape: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
            local.target = target
            return original(tape, target, *args, **kwargs)

        functools.update_wrapper(gradient, original)
        self._patcher.setattr(backprop.GradientTape, "gradient", gradient)

    def _hook_keras(self, keras: Any) -> None:
        if self._session is None:
            return
        try:
            from keras.src import backend  # type: ignore[import-not-found]

            if backend.backend() != "tensorflow":
                return  # Keras on JAX or torch: torch's own step hook covers the latter
            from keras.src.backend.tensorflow.trainer import TensorFlowTrainer  # type: ignore[import-not-found]
            from keras.src.optimizers.base_optimizer import BaseOptimizer  # type: ignore[import-not-found]
        except ImportError:
            return  # not Keras 3: no per-step digests (the verdict says UNVERIFIED)
        import tensorflow as tf  # Keras's TF backend has imported it already

        verifier = self
        original_make = TensorFlowTrainer.make_train_function
        original_apply = BaseOptimizer.apply

        # Mirrors TensorFlowTrainer.make_train_function (Keras 3): wraps the function it stores.
        def make_train_function(model: Any, *args: Any, **kwargs: Any) -> Any:
            result = original_make(model, *args, **kwargs)
            function = getattr(model, "train_function", None)
            if function is not None and not getattr(function, _WRAPPED, False):
                verifier._model_variables.pop(id(model), None)  # a rebuilt function may train other variables
                try:
                    model.train_function = verifier._wrap_train_function(model, function)
                except Exception as exc:  # noqa: BLE001
                    verifier._session.hook_failed("wrapping the Keras train function", exc)
            return model.train_function if result is function else result

        # Mirrors BaseOptimizer.apply (Keras 3), which apply_gradients calls.
        def apply(optimizer: Any, grads: Any, trainable_variables: Any = None) -> Any:
            local = verifier._local
            if getattr(local, "in_fit", 0) or getattr(local, "in_apply", 0) or verifier._session is None:
                return original_apply(optimizer, grads, trainable_variables)
            if trainable_variables is not None and not isinstance(trainable_variables, (list, tuple)):
                trainable_variables = list(trainable_variables)  # apply() lists it too; keep a copy
            local.in_apply = 1
            try:
                result = original_apply(optimizer, grads, trainable_variables)
            finally:
                local.in_apply = 0
            try:
                if len(grads):
                    verifier._after_apply(tf, optimizer, trainable_variables)
            except Exception as exc:  # noqa: BLE001 - never change what the user's program does
                verifier._session.hook_failed("the optimizer step digest", exc)
            return result

        functools.update_wrapper(make_train_function, original_make)
        functools.update_wrapper(apply, original_apply)
        self._patcher.setattr(TensorFlowTrainer, "make_train_function", make_train_function)
        self._patcher.setattr(BaseOptimizer, "apply", tf.autograph.experimental.do_not_convert(apply))

    # ------------------------------------------------------------ model.fit

    def _wrap_train_function(self, model: Any, function: Callable[[Any], Any]) -> Callable[[Any], Any]:
        verifier = self
        local = self._local

        @functools.wraps(function)
        def train_function(iterator: Any) -> Any:
            # The optimizer hook stays quiet meanwhile: its Python code runs while tracing here.
            local.in_fit = getattr(local, "in_fit", 0) + 1
            try:
                logs = function(iterator)
            finally:
                local.in_fit -= 1
            local.target = None
            if verifier._session is not None:
                try:
                    verifier._fit_step(model, logs)
                except Exception as exc:  # noqa: BLE001
                    verifier._session.hook_failed("the Keras train step digest", exc)
            return logs

        setattr(train_function, _WRAPPED, True)
        return train_function

    def _fit_step(self, model: Any, logs: Any) -> None:
        index = self._index(getattr(model, "optimizer", None) or model)
        names, digest = self._variables_of(model)
        loss = _scalar(logs.get("loss")) if isinstance(logs, dict) else None
        self._step(index, loss, names, lambda: _fold(digest().numpy()))

    def _variables_of(self, model: Any) -> tuple[list[str], Callable[[], Any]]:
        """Return the names of the model's variables (weights, Dropout seed states) and their digest function."""
        cached = self._model_variables.get(id(model))
        if cached is None:
            import tensorflow as tf

            variables = list(model.variables)
            cached = self._model_variables[id(model)] = ([_variable_name(v, i) for i, v in enumerate(variables)],
                                                         _digest_function(tf, variables))
            self._keepalive.append(model)
        return cached

    # ------------------------------------------------------------ custom loops

    def _after_apply(self, tf: Any, optimizer: Any, trainable_variables: Any) -> None:
        variables = list(trainable_variables if trainable_variables is not None
                         else getattr(optimizer, "_trainable_variables", []))
        index = self._index(optimizer)
        names = [_variable_name(v, i) for i, v in enumerate(variables)]
        target = getattr(self._local, "target", None)
        self._local.target = None
        if tf.executing_eagerly():
            key = tuple(id(v) for v in variables)
            digest = self._eager_digests.get(key)
            if digest is None:
                if len(self._eager_digests) > 64:
                    self._eager_digests.clear()
                digest = self._eager_digests[key] = _digest_function(tf, variables)
                self._keepalive.append(variables)
            self._step(index, _scalar(target), names, lambda: _fold(digest().numpy()))
            return
        from tensorflow.python.ops import control_flow_util  # type: ignore[import-not-found]

        graph = tf.compat.v1.get_default_graph()
        if control_flow_util.GraphOrParentsInXlaContext(graph):
            # XLA cannot compile a Python callback; such a step goes unchecked (the verdict says
            # UNVERIFIED if no step was checked at all).
            raise RuntimeError("per-step digests are not available inside tf.function(jit_compile=True)")
        has_loss = (target is not None and getattr(target, "graph", None) is graph
                    and target.shape.num_elements() == 1)
        # Reads of the variables placed after the update: automatic control dependencies order
        # them after its writes, and the callback is stateful, so it runs at every execution.
        values = [tf.convert_to_tensor(v) for v in variables]
        verifier = self

        def digest(*tensors: Any) -> None:
            try:
                loss = _scalar(tensors[0]) if has_loss else None
                arrays = [t.numpy() for t in tensors[1 if has_loss else 0:]]
                verifier._step(index, loss, names, lambda: [_crc(a) for a in arrays])
            except Exception as exc:  # noqa: BLE001
                if verifier._session is not None:
                    verifier._session.hook_failed("the optimizer step digest", exc)

        tf.py_function(digest, ([target] if has_loss else []) + values, Tout=[], name="detrun_step_digest")

    # ------------------------------------------------------------ record / compare

    def _index(self, owner: Any) -> int:
        key = id(owner)
        if key not in self._indices:
            self._indices[key] = len(self._indices)
            self._keepalive.append(owner)
        return self._indices[key]

    def _step(self, index: int, loss: float | None, names: list[str], digests: Callable[[], list[int]]) -> None:
        session = self._session
        if session is None:
            return
        with self._lock:  # py_function callbacks run on TF's threads
            self._pending = (index, loss, names, digests)
            session.clock.tick(None, "tensorflow")

    def _on_tick(self, tick: Tick) -> None:
        """Digest the variables of the step that just ticked the clock (its data waits in _pending)."""
        if tick.framework != "tensorflow" or self._pending is None:
            return
        (index, loss, names, digests), self._pending = self._pending, None
        per_param = digests() if tick.step % self._digest_every == 0 else None
        self._finish_step(tick.step, index, loss, per_param, names)

    def _finish_step(self, step: int, index: int, loss: float | None, per_param: list[int] | None,
                     names: list[str]) -> None:
        record_or_check_step(self._session, KIND, step, index, loss, per_param, names, noun="variable")
