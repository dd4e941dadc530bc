"""A small training loop that runs the ops `detrun profile` is built to find.

CPU by default; `--device cuda` runs it on a GPU.  Every op of interest sits on its own line with
a `# profile:` marker, so tests (and readers) can match the profiler's call sites to the source:

    detrun profile examples/profile_ops.py            # predictions for CUDA, on any machine
    detrun profile --device auto examples/profile_ops.py --device cuda   # on a GPU
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, EMBED, CLASSES, SLOTS = 32, 8, 4, 6


class SegNet(nn.Module):
    """A tiny segmentation-style net: conv, bilinear upsampling, adaptive pooling, embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, EMBED, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((4, 4))  # not 1x1: that size runs mean() and is safe
        self.embed = nn.Embedding(VOCAB, EMBED)
        self.head = nn.Conv2d(EMBED, CLASSES, 1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Mix the image features with per-slot token embeddings and predict a class per cell."""
        x = F.relu(self.conv(images))
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)  # profile: interpolate
        x = self.pool(x)  # profile: adaptive_avg_pool2d
        words = self.embed(tokens)  # profile: embedding
        per_slot = torch.zeros(images.shape[0], SLOTS, EMBED, device=images.device)
        per_slot.index_add_(1, slots, words)  # profile: index_add_
        slot_index = slots[None, :, None].expand_as(words)
        summed = torch.zeros_like(per_slot).scatter_add_(1, slot_index, words)  # profile: scatter_add_
        bias = (per_slot + summed).mean(dim=1)[:, :, None, None]
        return self.head(x + bias)


def class_weights(labels: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    """Weigh each class by the inverse of its confidence-weighted frequency."""
    counts = torch.bincount(labels.flatten(), weights=confidence.flatten(), minlength=CLASSES)  # profile: bincount
    return (counts.sum() / (counts + 1.0)).detach()


def main() -> None:
    """Train SegNet for --steps steps, printing the loss of each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps (0: forever)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = SegNet().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    step = 0
    while args.steps == 0 or step < args.steps:
        images = torch.randn(args.batch, 3, 8, 8, device=device)
        tokens = torch.randint(0, VOCAB, (args.batch, 10), device=device)
        slots = torch.randint(0, SLOTS, (10,), device=device)
        labels = torch.randint(0, CLASSES, (args.batch, 4, 4), device=device)
        logits = model(images, tokens, slots)
        weights = class_weights(labels, torch.rand(labels.shape, device=device))
        log_probs = F.log_softmax(logits, dim=1)
        loss = F.nll_loss(log_probs, labels, weight=weights)  # profile: nll_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step} loss {loss.item():.4f}", flush=True)
        step += 1


if __name__ == "__main__":
    main()
