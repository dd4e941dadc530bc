"""Time-series forecasting with a GRU, in the shape of the common "predict the next value of a
sine wave" tutorials: sliding windows, Adam, gradient clipping, a ReduceLROnPlateau scheduler.

Unseeded on purpose: the phase/noise of the series and the init change on every run.
DETRUN_CORPUS_PERTURB_STEP=k nudges one weight before the k-th optimizer step.
"""
import hashlib
import os

import numpy as np
import torch
from torch import nn

perturb_step = int(os.environ.get("DETRUN_CORPUS_PERTURB_STEP", "0"))
t = np.arange(0, 60, 0.1)
series = np.sin(t + np.random.uniform(0, 2 * np.pi)) + np.random.normal(0, 0.05, len(t))
window = 20
X = np.stack([series[i:i + window] for i in range(len(series) - window)]).astype(np.float32)
Y = series[window:].astype(np.float32)
X, Y = torch.from_numpy(X).unsqueeze(-1), torch.from_numpy(Y).unsqueeze(-1)
split = int(0.8 * len(X))


class Forecaster(nn.Module):
    def __init__(self, hidden=24):
        super().__init__()
        self.gru = nn.GRU(1, hidden, num_layers=1, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1])


model = Forecaster()
optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=1)
step = 0
for epoch in range(4):
    perm = torch.randperm(split)
    for i in range(0, split, 32):
        idx = perm[i:i + 32]
        loss = nn.functional.mse_loss(model(X[idx]), Y[idx])
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        step += 1
        if step == perturb_step:
            with torch.no_grad():
                model.head.weight[0, 0] += 1e-3
        optimizer.step()
    with torch.no_grad():
        val = nn.functional.mse_loss(model(X[split:]), Y[split:]).item()
    scheduler.step(val)
    print(f"epoch {epoch} train {loss.item():.6f} val {val:.6f}")

digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode() + tensor.numpy().tobytes())
print(f"final loss {loss.item():.6f}")
print(f"weights sha256 {digest.hexdigest()}")
