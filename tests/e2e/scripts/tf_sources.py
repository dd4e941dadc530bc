"""Draw from every TensorFlow/Keras randomness source the TF source hooks; print a digest of each."""
from __future__ import annotations

import hashlib
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf


def note(name: str, value: object) -> None:
    print(f"{name} {hashlib.sha256(np.asarray(value).tobytes()).hexdigest()[:16]}")


note("op seed: tf.random.uniform", tf.random.uniform([4]))
note("op seed: tf.random.shuffle", tf.random.shuffle(tf.range(10)))
note("op seed: Dataset.shuffle", np.array(list(tf.data.Dataset.range(10).shuffle(10).as_numpy_iterator())))
note("Generator.from_non_deterministic_state", tf.random.Generator.from_non_deterministic_state().normal([3]))
note("get_global_generator", tf.random.get_global_generator().uniform([3]))
note("Generator.from_seed(clock)", tf.random.Generator.from_seed(time.time_ns() % 2**31).normal([3]))
note("keras initializer", keras.initializers.GlorotUniform()((2, 3)))
note("keras.random.normal", keras.random.normal([3]))
note("keras SeedGenerator", keras.random.uniform([3], seed=keras.random.SeedGenerator()))
note("tf.timestamp", tf.timestamp())


@tf.function
def graph_ops() -> tf.Tensor:
    return tf.random.normal([2]) + tf.nn.dropout(tf.ones([4]), 0.5)[0] + tf.cast(tf.timestamp() * 0, tf.float32)


note("op seeds in tf.function", graph_ops())
tf.random.set_seed(int(time.time() * 1000) % 2**31)
note("tf.random.set_seed(clock)", tf.random.uniform([2]))
keras.utils.set_random_seed(int(time.time() * 1000) % 2**31)
note("keras.utils.set_random_seed(clock)", tf.random.uniform([2]))
note("keras after set_random_seed", keras.random.normal([2]))
tf.random.set_seed(None)
note("tf.random.set_seed(None)", tf.random.uniform([2]))
tf.compat.v1.set_random_seed(int(time.time() * 1e6) % 2**31)
note("tf.compat.v1.set_random_seed(clock)", tf.random.uniform([2]))
