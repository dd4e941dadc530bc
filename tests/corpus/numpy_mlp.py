"""A two-layer network in plain NumPy with hand-written backprop, in the shape of cs231n's
"neural net from scratch" assignment: no framework at all, minibatch SGD with momentum.

Unseeded on purpose: np.random's global generator draws the data, the init and the minibatches.
There is no framework state for detrun to digest, only the printed results and RNG state.
DETRUN_CORPUS_PERTURB_STEP=k adds 1e-3 to one weight right after the k-th update.
"""
import hashlib
import os

import numpy as np

N, D, H, C = 600, 10, 32, 3
X = np.random.randn(N, D)
y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)

params = {
    "W1": 0.1 * np.random.randn(D, H), "b1": np.zeros(H),
    "W2": 0.1 * np.random.randn(H, C), "b2": np.zeros(C),
}
velocity = {k: np.zeros_like(v) for k, v in params.items()}
lr, mu, reg = 0.1, 0.9, 1e-4
perturb_step = int(os.environ.get("DETRUN_CORPUS_PERTURB_STEP", "0"))


def loss_and_grads(Xb, yb):
    h = np.maximum(0, Xb @ params["W1"] + params["b1"])
    scores = h @ params["W2"] + params["b2"]
    scores -= scores.max(axis=1, keepdims=True)
    probs = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    loss = -np.log(probs[np.arange(len(yb)), yb]).mean() + 0.5 * reg * (params["W1"] ** 2).sum()
    dscores = probs
    dscores[np.arange(len(yb)), yb] -= 1
    dscores /= len(yb)
    grads = {"W2": h.T @ dscores, "b2": dscores.sum(axis=0)}
    dh = dscores @ params["W2"].T
    dh[h <= 0] = 0
    grads["W1"] = Xb.T @ dh + reg * params["W1"]
    grads["b1"] = dh.sum(axis=0)
    return loss, grads


for it in range(1, 301):
    batch = np.random.choice(N, 64, replace=False)
    loss, grads = loss_and_grads(X[batch], y[batch])
    for k in params:
        velocity[k] = mu * velocity[k] - lr * grads[k]
        params[k] += velocity[k]
    if it == perturb_step:
        params["W2"][0, 0] += 1e-3
    if it % 100 == 0:
        print(f"iteration {it} / 300: loss {loss:.6f}")

digest = hashlib.sha256()
for k in sorted(params):
    digest.update(k.encode() + params[k].tobytes())
print(f"final loss {loss:.6f}")
print(f"weights sha256 {digest.hexdigest()}")
