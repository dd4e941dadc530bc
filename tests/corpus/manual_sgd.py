"""Two-layer net fed by a shuffling DataLoader and updated by hand, as in the PyTorch
"Learning PyTorch with Examples" nn-module tutorial: `param -= learning_rate * param.grad`, no torch.optim.

Nothing is seeded, so the init, the data and the batch order change on every plain run. No optimizer
step hook fires here, so detrun can only check the state at the end.
DETRUN_CORPUS_PERTURB_STEP=k adds 1e-3 to one weight right after the k-th hand update.
"""
import hashlib
import os

import torch
from torch.utils.data import DataLoader, TensorDataset

N, D_in, H, D_out = 256, 20, 32, 1
x = torch.randn(N, D_in)
true_w = torch.randn(D_in, D_out)
y = x @ true_w + 0.1 * torch.randn(N, D_out)
loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)

model = torch.nn.Sequential(
    torch.nn.Linear(D_in, H),
    torch.nn.Tanh(),
    torch.nn.Linear(H, D_out),
)
loss_fn = torch.nn.MSELoss(reduction='mean')
learning_rate = 1e-2
perturb_step = int(os.environ.get('DETRUN_CORPUS_PERTURB_STEP', '0'))

step = 0
for epoch in range(6):
    for xb, yb in loader:
        y_pred = model(xb)
        loss = loss_fn(y_pred, yb)
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for param in model.parameters():
                param -= learning_rate * param.grad
        step += 1
        if step == perturb_step:
            with torch.no_grad():
                model[2].weight[0, 0] += 1e-3
    print(f"epoch {epoch} loss {loss.item():.6f}")

digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode() + tensor.numpy().tobytes())
print(f"final loss {loss.item():.6f}")
print(f"weights sha256 {digest.hexdigest()}")
