"""A script that "seeds for reproducibility" from the clock, names its run with uuid4 and a random
adjective, and writes its artifacts under runs/<name>/, the way many experiment templates do:
`seed = int(time.time())` fed to random, numpy and torch, then logged.

Every plain run gets a new seed and run name. DETRUN_CORPUS_PERTURB_STEP=k nudges one weight
before the k-th optimizer step.
"""
import hashlib
import json
import os
import random
import time
import uuid

import numpy as np
import torch
from torch import nn


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


seed = int(time.time() * 1000) % (2 ** 31)
set_seed(seed)
run_name = f"{random.choice(['brisk', 'calm', 'eager', 'lucky', 'quiet'])}-{uuid.uuid4().hex[:6]}"
run_dir = os.path.join("runs", run_name)
os.makedirs(run_dir, exist_ok=True)
print(f"run {run_name} seed {torch.initial_seed()}")  # what torch was seeded with

perturb_step = int(os.environ.get("DETRUN_CORPUS_PERTURB_STEP", "0"))
X = np.random.randn(400, 6).astype(np.float32)
Y = (X @ np.random.randn(6, 1)).astype(np.float32) + np.float32(0.1) * np.random.randn(400, 1).astype(np.float32)
model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-2)

history = []
for step in range(1, 61):
    idx = random.sample(range(len(X)), 40)
    loss = nn.functional.mse_loss(model(torch.from_numpy(X[idx])), torch.from_numpy(Y[idx]))
    optimizer.zero_grad()
    loss.backward()
    if step == perturb_step:
        with torch.no_grad():
            model[2].weight[0, 0] += 1e-3
    optimizer.step()
    history.append(loss.item())

with open(os.path.join(run_dir, "metrics.json"), "w") as f:
    json.dump({"seed": seed, "loss": history, "started": time.time()}, f)
torch.save(model.state_dict(), os.path.join(run_dir, "model.pt"))
print(f"artifacts {sorted(os.listdir(run_dir))}")

digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode() + tensor.numpy().tobytes())
print(f"final loss {loss.item():.6f}")
print(f"weights sha256 {digest.hexdigest()}")
