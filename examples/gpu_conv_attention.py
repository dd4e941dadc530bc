"""A small conv + attention model trained for a few steps: cuDNN convolutions, cuBLAS matmuls and SDPA.

On a GPU it turns on cudnn.benchmark (GCA_BENCHMARK=0 leaves it off) and TF32 for float32 matmuls
and convolutions (GCA_TF32=0 leaves it off); the attention runs in bfloat16 through
scaled_dot_product_attention. Without a GPU it runs the same model on the CPU. It seeds nothing, so
two plain runs differ; it prints the loss of every step and the sha256 of the final weights.

    python examples/gpu_conv_attention.py --steps 8
    detrun record --kernel-steps 2 examples/gpu_conv_attention.py   # the kernels of steps 1-2 are in the trace
    detrun replay trace.zst                              # REPRODUCED
    NVIDIA_TF32_OVERRIDE=0 detrun replay trace.zst       # other (non-TF32) kernels: a kernel divergence
"""
from __future__ import annotations

import argparse
import hashlib
import os

import torch
import torch.nn.functional as F
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=8)
parser.add_argument("--batch", type=int, default=16)
args = parser.parse_args()

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if device.type == "cuda":
    torch.backends.cudnn.benchmark = os.environ.get("GCA_BENCHMARK", "1") == "1"
    if os.environ.get("GCA_TF32", "1") == "1":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


class ConvAttention(nn.Module):
    """Two conv blocks, then multi-head self-attention over the feature map's positions."""

    def __init__(self, channels: int = 64, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.heads = heads
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, stride=2), nn.BatchNorm2d(channels),
                                   nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels),
                                   nn.ReLU())
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem(x))                      # (B, C, H, W)
        tokens = x.flatten(2).transpose(1, 2)             # (B, HW, C)
        b, n, c = tokens.shape
        q, k, v = self.qkv(tokens).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        low = torch.bfloat16 if device.type == "cuda" else q.dtype
        attended = F.scaled_dot_product_attention(q.to(low), k.to(low), v.to(low)).to(tokens.dtype)
        tokens = tokens + self.proj(attended.transpose(1, 2).reshape(b, n, c))
        return self.head(tokens.mean(dim=1))


model = ConvAttention().to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
images = torch.randn(args.batch, 3, 32, 32, device=device)
labels = torch.randint(0, 10, (args.batch,), device=device)

for step in range(1, args.steps + 1):
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step}: loss {loss.item():.6f}")

digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode())
    digest.update(tensor.detach().cpu().numpy().tobytes())
print(f"device {device.type}; weights sha256 {digest.hexdigest()}")
