"""`torch.compile` on a small MLP, as in the PyTorch "Introduction to torch.compile" tutorial:
inductor on CPU, eager optimizer. Falls back to eager (and says so) when no C++ compiler works.

Unseeded on purpose. DETRUN_CORPUS_PERTURB_STEP=k nudges one weight before the k-th optimizer step.
"""
import hashlib
import os
import shutil

import torch
from torch import nn

model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
perturb_step = int(os.environ.get("DETRUN_CORPUS_PERTURB_STEP", "0"))

if shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++"):
    compiled = torch.compile(model)
    print("compiled with inductor")
else:
    compiled = model
    print("no C++ compiler: running eager")

x = torch.randn(512, 16)
y = x[:, :4].cumsum(dim=1)
for step in range(1, 41):
    idx = torch.randint(0, len(x), (32,))
    loss = nn.functional.mse_loss(compiled(x[idx]), y[idx])
    optimizer.zero_grad()
    loss.backward()
    if step == perturb_step:
        with torch.no_grad():
            model[2].weight[0, 0] += 1e-3
    optimizer.step()
    if step % 10 == 0:
        print(f"step {step} loss {loss.item():.6f}")

digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode() + tensor.detach().numpy().tobytes())
print(f"final loss {loss.item():.6f}")
print(f"weights sha256 {digest.hexdigest()}")
