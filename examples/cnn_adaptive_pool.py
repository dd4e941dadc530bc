"""A small CNN with AdaptiveAvgPool2d and an embedding: the model torch's deterministic mode refuses on CUDA.

On a GPU, `torch.use_deterministic_algorithms(True)` raises in AdaptiveAvgPool2d's backward; under
`detrun record` (policy strict) detrun's patch replaces that kernel, so the run trains and replays
bit for bit. On CPU it runs as is. Prints the sha256 of the final weights.
"""
from __future__ import annotations

import argparse
import hashlib

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
args = parser.parse_args()

torch.seed()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((5, 5))
        self.embed = nn.Embedding(10, 8)
        self.head = nn.Linear(8 * 25 + 8, 10)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        features = self.pool(torch.relu(self.conv(images))).flatten(1)
        return self.head(torch.cat([features, self.embed(tokens)], dim=1))


model = Net().to(args.device)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
for _ in range(args.steps):
    images = torch.randn(16, 3, 23, 23, device=args.device)
    tokens = torch.randint(0, 10, (16,), device=args.device)
    labels = torch.randint(0, 10, (16,), device=args.device)
    loss = nn.functional.cross_entropy(model(images, tokens), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode())
    digest.update(tensor.detach().cpu().numpy().tobytes())
print(f"weights sha256 {digest.hexdigest()}")
