"""Checkpoint every epoch and resume from the newest one, the way most training templates do:
`torch.save` to checkpoints/epoch_XXX.pt, then `glob` + `os.listdir` to find the latest. Run twice in
one directory it resumes; run fresh it starts from epoch 0.

Unseeded on purpose. DETRUN_CORPUS_PERTURB_STEP=k nudges one weight before the k-th optimizer step.
"""
import argparse
import glob
import hashlib
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--ckpt-dir", default="checkpoints")
args = parser.parse_args()
perturb_step = int(os.environ.get("DETRUN_CORPUS_PERTURB_STEP", "0"))

x = torch.randn(256, 8)
y = (x[:, 0] * x[:, 1] > 0).long()
loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)

start_epoch = 0
os.makedirs(args.ckpt_dir, exist_ok=True)
existing = sorted(glob.glob(os.path.join(args.ckpt_dir, "epoch_*.pt")))
if existing:
    state = torch.load(existing[-1])
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    start_epoch = state["epoch"] + 1
    print(f"resumed from {os.path.basename(existing[-1])}")

step = 0
for epoch in range(start_epoch, args.epochs):
    for xb, yb in loader:
        loss = nn.functional.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        step += 1
        if step == perturb_step:
            with torch.no_grad():
                model[2].weight[0, 0] += 1e-3
        optimizer.step()
    scheduler.step()
    torch.save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "loss": loss.item()},
               os.path.join(args.ckpt_dir, f"epoch_{epoch:03d}.pt"))
    # Keep the two newest checkpoints, like `save_total_limit=2`.
    for old in sorted(os.listdir(args.ckpt_dir))[:-2]:
        os.remove(os.path.join(args.ckpt_dir, old))
    print(f"epoch {epoch} loss {loss.item():.6f} checkpoints {sorted(os.listdir(args.ckpt_dir))}")

latest = max(os.listdir(args.ckpt_dir))
final = torch.load(os.path.join(args.ckpt_dir, latest))
digest = hashlib.sha256()
for name, tensor in sorted(final["model"].items()):
    digest.update(name.encode() + tensor.numpy().tobytes())
print(f"latest checkpoint {latest}")
print(f"final loss {final['loss']:.6f}")
print(f"weights sha256 {digest.hexdigest()}")
