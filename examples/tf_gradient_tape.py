"""A custom `tf.GradientTape` training loop that seeds nothing, so two plain runs differ.

Unseeded on purpose: numpy's global generator makes the data, `tf.random.normal` initialises the
weights and `tf.nn.dropout` drops units (op seeds derived from the unset global seed),
`tf.data.Dataset.shuffle` reshuffles every epoch, and a `tf.random.Generator` built from
non-deterministic state adds noise to the inputs. The step runs inside `tf.function` (pass
`--eager` to run it eagerly). It prints the loss of every epoch and the sha256 of the weights.

    python examples/tf_gradient_tape.py --epochs 3
    detrun record examples/tf_gradient_tape.py --epochs 3
    detrun replay trace.zst examples/tf_gradient_tape.py

Set PERTURB_STEP=k to nudge `dense2/kernel` between the gradient and the update of step k
(used to test DIVERGED).
"""
from __future__ import annotations

import argparse
import hashlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off stderr

import numpy as np
import tensorflow as tf

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--samples", type=int, default=256)
parser.add_argument("--batch", type=int, default=32)
parser.add_argument("--eager", action="store_true", help="run the training step eagerly")
args = parser.parse_args()

features = np.random.rand(args.samples, 16).astype("float32")  # numpy's global RNG, never seeded
labels = (features[:, :8].sum(axis=1) > features[:, 8:].sum(axis=1)).astype("int32")
dataset = tf.data.Dataset.from_tensor_slices((features, labels)).shuffle(args.samples).batch(args.batch)

noise = tf.random.Generator.from_non_deterministic_state()  # state from the OS
w1 = tf.Variable(tf.random.normal([16, 32], stddev=0.3), name="dense1/kernel")
b1 = tf.Variable(tf.zeros([32]), name="dense1/bias")
w2 = tf.Variable(tf.random.normal([32, 2], stddev=0.3), name="dense2/kernel")
b2 = tf.Variable(tf.zeros([2]), name="dense2/bias")
variables = [w1, b1, w2, b2]
optimizer = tf.keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)
nudge = tf.constant(np.pad([[1e-3]], [(0, 31), (0, 1)]).astype("float32"))


def train_step(x: tf.Tensor, y: tf.Tensor, perturb: tf.Tensor) -> tf.Tensor:
    x = x + noise.normal(tf.shape(x), stddev=0.01)
    with tf.GradientTape() as tape:
        hidden = tf.nn.dropout(tf.nn.relu(x @ w1 + b1), rate=0.2)
        logits = hidden @ w2 + b2
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
    grads = tape.gradient(loss, variables)
    if perturb:
        w2.assign_add(nudge)
    optimizer.apply_gradients(zip(grads, variables))
    return loss


if not args.eager:
    train_step = tf.function(train_step)

perturb_step = int(os.environ.get("PERTURB_STEP", "0"))
step = 0
for epoch in range(args.epochs):
    total = 0.0
    for x, y in dataset:
        step += 1
        total += float(train_step(x, y, tf.constant(step == perturb_step)))
    print(f"epoch {epoch} loss {total!r}")

digest = hashlib.sha256()
for variable in variables:
    digest.update(variable.name.encode())
    digest.update(variable.numpy().tobytes())
print(f"weights sha256 {digest.hexdigest()}")
