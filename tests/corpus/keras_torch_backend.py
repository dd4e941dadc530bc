"""Keras 3 "Simple MNIST convnet" in the shape of the keras.io example on the torch backend
(KERAS_BACKEND=torch, set before the import), `fit(verbose=1)` with its progress bar on stdout,
on synthetic 16x16 digits. Keras runs its own optimizer, so no torch.optim step hook fires.

Unseeded on purpose: initializers, Dropout and fit's shuffle draw fresh seeds on every run.
DETRUN_CORPUS_PERTURB_STEP=k nudges one kernel weight just before the k-th training batch.
"""
import hashlib
import os

os.environ["KERAS_BACKEND"] = "torch"

import keras
import numpy as np
from keras import layers

num_classes = 10
input_shape = (16, 16, 1)

# Synthetic digits: class c is a bright bar in row c, plus fresh noise each run.
y_train = np.random.randint(0, num_classes, 512)
x_train = np.random.rand(512, 16, 16, 1).astype("float32") * 0.3
x_train[np.arange(512), y_train, 2:14, 0] += 0.7
y_train = keras.utils.to_categorical(y_train, num_classes)


class Perturb(keras.callbacks.Callback):
    """Test hook: nudge one weight before a given training batch (1-based over the whole fit)."""

    def __init__(self, step):
        super().__init__()
        self.step = step
        self.seen = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            kernel = self.model.layers[-1].kernel
            kernel.assign(kernel.numpy() + np.pad([[1e-3]], [(0, kernel.shape[0] - 1), (0, kernel.shape[1] - 1)]))


model = keras.Sequential([
    keras.Input(shape=input_shape),
    layers.Conv2D(8, kernel_size=(3, 3), activation="relu"),
    layers.MaxPooling2D(pool_size=(2, 2)),
    layers.Flatten(),
    layers.Dropout(0.5),
    layers.Dense(num_classes, activation="softmax"),
])
model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])

perturb_step = int(os.environ.get("DETRUN_CORPUS_PERTURB_STEP", "0"))
callbacks = [Perturb(perturb_step)] if perturb_step else []
history = model.fit(x_train, y_train, batch_size=64, epochs=2, validation_split=0.125, verbose=1,
                    callbacks=callbacks)

digest = hashlib.sha256()
for weight in model.weights:
    digest.update(weight.path.encode() + np.asarray(weight.numpy()).tobytes())
print(f"final loss {history.history['loss'][-1]:.6f}")
print(f"weights sha256 {digest.hexdigest()}")
