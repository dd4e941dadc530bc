"""A TF training step that uses ops the TensorFlow knowledge base flags (profiled by tests)."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

table = tf.Variable(tf.random.normal([10, 4]), name="table")
images = tf.random.uniform([2, 8, 8, 4])
optimizer = tf.keras.optimizers.SGD(0.1)


def step(ids: tf.Tensor) -> tf.Tensor:
    with tf.GradientTape() as tape:
        rows = tf.gather(table, ids)  # its gradient is an IndexedSlices
        pooled = tf.math.unsorted_segment_sum(rows, ids % 3, num_segments=3)
        big = tf.image.resize(images * tf.reduce_mean(pooled), [16, 16])
        loss = tf.reduce_sum(big)
    grad = tape.gradient(loss, table)
    optimizer.apply_gradients([(tf.convert_to_tensor(grad), table)])  # densifies the gather gradient
    return loss


if "--eager" not in sys.argv:
    step = tf.function(step)

for _ in range(3):
    print(float(step(tf.constant([1, 2, 2, 5]))))
