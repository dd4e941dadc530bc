"""A tiny unseeded regression; with --empty, the program allocates a buffer with torch.empty at step 3.

It prints torch's fill_uninitialized_memory flag at each step, and whether the buffer came back
filled (NaN), so a test can see when detrun's policy turned the fill on.
"""
from __future__ import annotations

import hashlib
import sys

import torch
from torch import nn

model = nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
inputs, targets = torch.randn(32, 8), torch.randn(32, 1)
for step in range(1, 6):
    if "--empty" in sys.argv and step == 3:
        buffer = torch.empty(16)
        print(f"buffer filled with NaN: {bool(torch.isnan(buffer).all())}")
    loss = nn.functional.mse_loss(model(inputs), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step} fill {torch.utils.deterministic.fill_uninitialized_memory}")
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
print(f"weights sha256 {digest}")
