"""A hand-rolled training loop with a tqdm progress bar on stdout, the way many research repos
write theirs: `for batch in tqdm(loader, file=sys.stdout)` with the loss in the postfix.

Unseeded on purpose. DETRUN_CORPUS_PERTURB_STEP=k nudges one weight before the k-th optimizer step.
"""
import hashlib
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

x = torch.randn(640, 10)
y = torch.sin(x[:, :1] * 2) + 0.5 * x[:, 1:2] ** 2
loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
model = nn.Sequential(nn.Linear(10, 64), nn.GELU(), nn.Linear(64, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
perturb_step = int(os.environ.get("DETRUN_CORPUS_PERTURB_STEP", "0"))

step = 0
for epoch in range(3):
    progress = tqdm(loader, desc=f"epoch {epoch}", file=sys.stdout)
    for xb, yb in progress:
        loss = nn.functional.mse_loss(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        step += 1
        if step == perturb_step:
            with torch.no_grad():
                model[2].weight[0, 0] += 1e-3
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")

digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode() + tensor.numpy().tobytes())
print(f"final loss {loss.item():.6f}")
print(f"weights sha256 {digest.hexdigest()}")
