"""A small Keras CNN that seeds nothing, so two plain runs give different weights.

Nothing is seeded: the synthetic data comes from numpy's global generator, Keras draws its
initializer and Dropout seeds from Python's `random`, and `model.fit(shuffle=True)` shuffles with
TensorFlow op seeds. It prints the loss history, a few predictions and the sha256 of the weights.

    python examples/keras_unseeded.py --epochs 3
    detrun record examples/keras_unseeded.py --epochs 3
    detrun replay trace.zst examples/keras_unseeded.py

Set PERTURB_STEP=k to nudge one weight just before training step k (used to test DIVERGED).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off stderr

import numpy as np
import keras
from keras import layers

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--samples", type=int, default=384)
parser.add_argument("--batch", type=int, default=32)
parser.add_argument("--timing", action="store_true", help="print the seconds fit and predict took (benchmarks)")
args = parser.parse_args()

# Synthetic 12x12 "images" of three classes from numpy's global generator, never seeded.
images = np.random.rand(args.samples + 96, 12, 12, 1).astype("float32")
labels = (images[:, :6].mean(axis=(1, 2, 3)) * 3 > images[:, 6:].mean(axis=(1, 2, 3)) * 3).astype("int64")
labels += (images[:, :, :6].mean(axis=(1, 2, 3)) > 0.5).astype("int64")
x_train, y_train = images[:args.samples], labels[:args.samples]
x_val, y_val = images[args.samples:], labels[args.samples:]

model = keras.Sequential([
    keras.Input(shape=(12, 12, 1)),
    layers.Conv2D(8, 3, activation="relu", name="conv"),
    layers.MaxPooling2D(2),
    layers.Dropout(0.25),
    layers.Flatten(),
    layers.Dense(16, activation="relu", name="hidden"),
    layers.Dropout(0.25),
    layers.Dense(3, name="logits"),
])
model.compile(optimizer=keras.optimizers.Adam(1e-2),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

callbacks = []
perturb_step = int(os.environ.get("PERTURB_STEP", "0"))
if perturb_step:
    class Perturb(keras.callbacks.Callback):
        """Nudge one weight of the output layer just before training step `perturb_step`."""

        def __init__(self) -> None:
            super().__init__()
            self.step = 0

        def on_train_batch_begin(self, batch: int, logs: object = None) -> None:
            self.step += 1
            if self.step == perturb_step:
                kernel = self.model.get_layer("logits").kernel
                kernel.assign(kernel + np.pad([[1e-3]], [(0, kernel.shape[0] - 1), (0, kernel.shape[1] - 1)]))

    callbacks.append(Perturb())

started = time.perf_counter()
history = model.fit(x_train, y_train, batch_size=args.batch, epochs=args.epochs, shuffle=True,
                    validation_data=(x_val, y_val), callbacks=callbacks, verbose=0)
for name, values in sorted(history.history.items()):
    print(f"history {name} {' '.join(repr(float(v)) for v in values)}")

predictions = model.predict(x_val, verbose=0)
elapsed = time.perf_counter() - started
print(f"predictions {' '.join(f'{v:.6f}' for v in predictions[0])} "
      f"sha256 {hashlib.sha256(predictions.tobytes()).hexdigest()}")

digest = hashlib.sha256()
for weight in model.weights:
    digest.update(weight.path.encode())
    digest.update(np.asarray(weight.numpy()).tobytes())
print(f"weights sha256 {digest.hexdigest()}")
if args.timing:
    print(f"loop_seconds {elapsed:.4f}")
