"""Calls an op that refuses op determinism on every device, then a flagged op after it."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

started = tf.raw_ops.Timestamp()  # FailedPreconditionError under op determinism, even on CPU
print(float(tf.reduce_sum(tf.math.unsorted_segment_sum(tf.ones([4, 2]), [0, 1, 1, 0], 2))))
