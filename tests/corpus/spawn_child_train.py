"""Training moved into a spawned child process, the way launchers and notebook-safe scripts do it:
the parent builds nothing, a `spawn` child trains and saves a checkpoint, the parent loads it.

Unseeded: the child's init, data and batch order change on every run.
DETRUN_CORPUS_PERTURB_STEP=k: the child nudges one weight just before its k-th optimizer step.
"""
import hashlib
import multiprocessing as mp
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def build_model():
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 3))


def worker(out_path, epochs):
    perturb_step = int(os.environ.get('DETRUN_CORPUS_PERTURB_STEP', '0'))
    x = torch.randn(300, 12)
    y = (x[:, :3].argmax(dim=1) + (x[:, 3] > 1).long()) % 3
    loader = DataLoader(TensorDataset(x, y), batch_size=30, shuffle=True)
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    step = 0
    for epoch in range(epochs):
        for xb, yb in loader:
            loss = nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            step += 1
            if step == perturb_step:
                with torch.no_grad():
                    model[2].weight[0, 0] += 1e-3
            optimizer.step()
        print(f"[child] epoch {epoch} loss {loss.item():.6f}", flush=True)
    torch.save({"model": model.state_dict(), "loss": loss.item()}, out_path)


if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=worker, args=("child_model.pt", 4))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"training child failed with exit code {child.exitcode}")

    checkpoint = torch.load("child_model.pt")
    model = build_model()
    model.load_state_dict(checkpoint["model"])
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.numpy().tobytes())
    print(f"final loss {checkpoint['loss']:.6f}")
    print(f"weights sha256 {digest.hexdigest()}")
