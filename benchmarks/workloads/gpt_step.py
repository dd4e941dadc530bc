"""Benchmark workload: a small GPT-style decoder trained on random tokens; prints its loop time.

    python gpt_step.py STEPS WARMUP [--device cuda|cpu] [--small] [--policy det|det-fill]

Unseeded on purpose (dropout, init, data). The loop time covers the steps after WARMUP, with the
device synchronised at both ends only, as a training loop runs. `--policy` turns on torch's
deterministic algorithms in the script itself (det-fill: with fill_uninitialized_memory), to
measure what the determinism policy costs without detrun.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("steps", type=int)
parser.add_argument("warmup", type=int)
parser.add_argument("--device", default="cuda")
parser.add_argument("--small", action="store_true", help="a CPU-sized model, for a dry run")
parser.add_argument("--policy", choices=["det", "det-fill"])
args = parser.parse_args()
if args.policy:
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = args.policy == "det-fill"

vocab, width, heads, layers, context, batch = (256, 64, 4, 2, 32, 8) if args.small else (8192, 512, 8, 6, 256, 16)


class Decoder(nn.Module):
    """Token and position embeddings, pre-norm causal transformer layers, a tied output head."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.1, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Return next-token logits."""
        x = self.tokens(ids) + self.positions.weight[: ids.shape[1]]
        x = self.blocks(x, mask=self.mask, is_causal=True)
        return self.norm(x) @ self.tokens.weight.T * width**-0.5


device = torch.device(args.device)
model = Decoder().to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
data = torch.randint(0, vocab, (64, batch, context + 1), device=device)


def sync() -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


for step in range(args.steps + args.warmup):
    if step == args.warmup:
        sync()
        start = time.perf_counter()
    ids = data[step % len(data)]
    logits = model(ids[:, :-1])
    loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
sync()
print(f"loop_seconds {time.perf_counter() - start:.6f}")
print(f"final loss {loss.item():.6f}")
