"""A small CPU training run that seeds nothing and so differs on every plain run.

It uses the usual suspects: random.shuffle, numpy augmentation, torch.seed(), a seed taken from
the clock, an RNG seeded from os.urandom, a uuid4 run name, and the iteration order of a set of
strings (which depends on the hash seed). It prints the sha256 of the final weights.

    python examples/train_unseeded.py --steps 200
    detrun record examples/train_unseeded.py --steps 200
    detrun replay trace.zst examples/train_unseeded.py

Set PERTURB_STEP=k to nudge one weight just before optimizer step k (used to test DIVERGED).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import time
import uuid

import numpy as np
import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--batch", type=int, default=32)
args = parser.parse_args()

run_name = f"run-{uuid.uuid4().hex[:8]}"  # differs every run unless uuid4 is replayed
torch.seed()  # a nondeterministic torch seed
clock_rng = random.Random(time.time())  # seeded from the clock
entropy_rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))  # seeded from OS entropy

# A vocabulary whose iteration order depends on PYTHONHASHSEED feeds the embedding.
vocabulary = {"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"}
token_of = {word: index for index, word in enumerate(vocabulary)}

features = np.random.rand(512, 16).astype(np.float32)  # numpy's global RNG, never seeded
labels = (features.sum(axis=1) > 8).astype(np.int64)
words = [random.choice(sorted(vocabulary)) for _ in range(512)]


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(vocabulary), 4)
        self.fc1 = nn.Linear(16 + 4, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, self.embed(tokens)], dim=1)
        return self.fc2(torch.relu(self.fc1(h)))


model = Model()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
perturb_step = int(os.environ.get("PERTURB_STEP", "0"))
order = list(range(len(features)))

for step in range(1, args.steps + 1):
    if (step - 1) % (len(order) // args.batch) == 0:
        random.shuffle(order)
    start = ((step - 1) * args.batch) % len(order)
    batch = order[start:start + args.batch]
    x = features[batch] + entropy_rng.normal(0, 0.01, size=(len(batch), 16)).astype(np.float32)  # augmentation
    x *= np.float32(1 + 0.01 * clock_rng.random())
    tokens = torch.tensor([token_of[words[i]] for i in batch])
    logits = model(torch.from_numpy(x), tokens)
    loss = nn.functional.cross_entropy(logits, torch.from_numpy(labels[batch]))
    optimizer.zero_grad()
    loss.backward()
    if step == perturb_step:
        with torch.no_grad():
            model.fc2.weight[0, 0] += 1e-3
    optimizer.step()

digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode())
    digest.update(tensor.numpy().tobytes())
print(f"{run_name} final loss {loss.item():.6f}")
print(f"weights sha256 {digest.hexdigest()}")
