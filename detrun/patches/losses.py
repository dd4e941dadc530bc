"""Deterministic loss kernels: nll_loss2d forward as a gather and a tree reduction, ctc_loss backward by gathers.

torch's CUDA nll_loss2d forward sums per-block partials into the output with atomicAdd, and its
ctc_loss backward scatters alpha*beta terms into the gradient with atomicAdd.
"""
from __future__ import annotations

import torch

from detrun.patches._common import compute_dtype, deterministic_scatter_sum, with_out
from detrun.patches._core import Kernel, Patch

REDUCTION_NONE, REDUCTION_MEAN, REDUCTION_SUM = 0, 1, 2


def nll_loss2d_forward(
    self: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    reduction: int,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (loss, total_weight) of the 2-D negative log likelihood, summed by a deterministic reduction."""
    if self.dim() != 4:
        raise RuntimeError(f"only batches of spatial inputs supported (4D tensors), but got input of dimension: {self.dim()}")
    if target.dim() != 3:
        raise RuntimeError(f"only batches of spatial targets supported (3D tensors) but got targets of dimension: {target.dim()}")
    if (self.shape[0], *self.shape[2:]) != tuple(target.shape):
        raise RuntimeError(f"input and target batch or spatial sizes don't match: target {list(target.shape)}, input {list(self.shape)}")
    classes = self.shape[1]
    if weight is not None and weight.numel() != classes:
        raise RuntimeError(f"weight tensor should be defined either for all {classes} classes or no classes")
    ignored = target == ignore_index
    safe_target = torch.where(ignored, torch.zeros_like(target), target).to(torch.int64)
    # gather and the weight lookup bounds-check the remaining targets, as aten's kernel asserts.
    picked = self.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    if weight is None:
        per_element_weight = torch.ones_like(picked)
    else:
        per_element_weight = weight.to(self.dtype)[safe_target]
    per_element_weight = per_element_weight.masked_fill(ignored, 0)
    losses = -picked * per_element_weight
    if reduction == REDUCTION_NONE:
        return losses, torch.zeros((), dtype=self.dtype, device=self.device)
    acc = compute_dtype(self.dtype)
    # torch.sum is a fixed-shape tree reduction: the same order on every run (no atomics).
    total_weight = per_element_weight.to(acc).sum()
    total = losses.to(acc).sum()
    if reduction == REDUCTION_MEAN:
        total = total / total_weight
    return total.to(self.dtype), total_weight.to(self.dtype)


PATCHES: tuple[Patch, ...] = (
    Patch(
        name="nll_loss2d_forward",
        # Mirrors aten/src/ATen/native/cuda/NLLLoss2d.cu: nll_loss2d_forward_out_cuda_template
        # (native_functions.yaml: nll_loss2d_forward, nll_loss2d_forward.output, dispatch CUDA).
        kernels=(
            Kernel(
                "nll_loss2d_forward",
                "aten::nll_loss2d_forward(Tensor self, Tensor target, Tensor? weight, int reduction, SymInt ignore_index)"
                " -> (Tensor output, Tensor total_weight)",
                nll_loss2d_forward,
            ),
            Kernel(
                "nll_loss2d_forward.output",
                "aten::nll_loss2d_forward.output(Tensor self, Tensor target, Tensor? weight, int reduction, "
                "SymInt ignore_index, *, Tensor(a!) output, Tensor(b!) total_weight) -> (Tensor(a!), Tensor(b!))",
                with_out(nll_loss2d_forward, n_out=2),
            ),
        ),
        impl=nll_loss2d_forward,
        upstream="aten/src/ATen/native/cuda/NLLLoss2d.cu: nll_loss2d_forward_out_cuda_template",
        min_torch=(2, 1),
        related_ops=("aten::nll_loss2d", "aten::nll_loss_nd", "aten::cross_entropy_loss"),
        summary="gather of the target log-probabilities, then torch.sum (a fixed tree reduction)",
    ),
)
