"""A tiny unseeded training run that reads a CSV, saves a checkpoint and a CSV log every epoch, and can resume.

PERTURB=1 perturbs the saved checkpoint (not the model) so that only the written file differs.
"""
import argparse
import csv
import os
import time

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--resume", action="store_true")
parser.add_argument("--epochs", type=int, default=2)
args = parser.parse_args()

with open("data/train.csv") as f:
    rows = [[float(v) for v in row] for row in csv.reader(f)]
data = torch.tensor(rows)
inputs, labels = data[:, :2].reshape(-1, 1, 2), data[:, 2:]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 4, 2)
        self.fc = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv1(x)).flatten(1))


model = Net()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
os.makedirs("runs", exist_ok=True)
if args.resume:
    model.load_state_dict(torch.load("runs/last.pt"))
for epoch in range(args.epochs):
    started = time.time()
    order = torch.randperm(len(inputs))
    for batch in order.split(16):
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(inputs[batch]), labels[batch])
        loss.backward()
        optimizer.step()
    state = model.state_dict()
    if os.environ.get("PERTURB"):
        state = {k: v + 1e-3 if k == "conv1.weight" else v for k, v in state.items()}
    torch.save(state, "runs/last.pt")
    new_log = not os.path.exists("runs/log.csv")
    with open("runs/log.csv", "a") as log:
        if new_log:
            log.write("epoch,loss,epoch_time\n")
        log.write(f"{epoch},{loss.item():.6f},{time.time() - started:.4f}\n")
    print(f"epoch {epoch} loss {loss.item():.6f}")
