"""Deterministic embedding_bag dense backward, max mode included: sorted scatter sums of gradient rows.

torch's CUDA max-mode backward (aten/src/ATen/native/cuda/EmbeddingBag.cu: embedding_bag_backward_cuda_max)
adds each bag's gradient into the arg-max rows with atomicAdd, and raises in deterministic mode.
Replacing the op means replacing every mode, so sum and mean are here too (as sorted row sums, the
same scheme as aten's embedding_backward_cuda_kernel).
"""
from __future__ import annotations

import torch

from detrun.patches._common import compute_dtype, deterministic_scatter_sum, with_out
from detrun.patches._core import Kernel, Patch

MODE_SUM, MODE_MEAN, MODE_MAX = 0, 1, 2


def embedding_bag_dense_backward(
    grad: torch.Tensor,
    indices: torch.Tensor,
    offset2bag: torch.Tensor,
    bag_size: torch.Tensor,
    maximum_indices: torch.Tensor,
    num_weights: int,
    scale_grad_by_freq: bool,
    mode: int,
    per_sample_weights: torch.Tensor | None,
    padding_idx: int = -1,
) -> torch.Tensor:
    """Return grad_weight (num_weights, D) of embedding_bag for sum, mean or max bags."""
    acc = compute_dtype(grad.dtype)
    dim = grad.shape[-1]
    indices = indices.reshape(-1).to(torch.int64)
    if mode == MODE_MAX:
        # Each (bag, column) sends its gradient to the row that won the max; empty bags and padding send nothing.
        winners = maximum_indices.to(torch.int64)
        live = (bag_size.to(torch.int64)[:, None] > 0) & (winners >= 0) & (winners != padding_idx)
        columns = torch.arange(dim, device=grad.device, dtype=torch.int64)
        dead_slot = num_weights * dim  # one spare cell collects the masked entries, so no host sync is needed
        flat = torch.where(live, winners * dim + columns, torch.full_like(winners, dead_slot))
        summed = deterministic_scatter_sum(num_weights * dim + 1, flat, grad.to(acc), dtype=acc)
        return summed[:dead_slot].view(num_weights, dim).to(grad.dtype)
    scale = torch.ones(indices.shape[0], dtype=acc, device=grad.device)
    if per_sample_weights is not None:
        scale = scale * per_sample_weights.reshape(-1).to(acc)
    bags = offset2bag.reshape(-1).to(torch.int64)
    if mode == MODE_MEAN:
        scale = scale / bag_size.to(acc)[bags].clamp(min=1)
    if scale_grad_by_freq:
        counts = deterministic_scatter_sum(num_weights, indices, torch.ones_like(indices))
        scale = scale / counts[indices].to(acc)
    rows = grad.to(acc)[bags] * scale[:, None]
    # Padding entries go to a spare row that is dropped, so they never touch a real row.
    targets = torch.where(indices == padding_idx, torch.full_like(indices, num_weights), indices)
    grad_weight = torch.zeros(num_weights + 1, dim, dtype=acc, device=grad.device)
    grad_weight.index_put_((targets,), rows, accumulate=True)
    return grad_weight[:num_weights].to(grad.dtype)


_ARGS = (
    "Tensor grad, Tensor indices, Tensor offset2bag, Tensor bag_size, Tensor maximum_indices, SymInt num_weights, "
    "bool scale_grad_by_freq, int mode, Tensor? per_sample_weights, int padding_idx=-1"
)

PATCHES: tuple[Patch, ...] = (
    Patch(
        name="embedding_bag_backward",
        # Mirrors aten/src/ATen/native/cuda/EmbeddingBag.cu: _embedding_bag_dense_backward_cuda
        # (native_functions.yaml: _embedding_bag_dense_backward, dispatch CUDA).
        kernels=(
            Kernel(
                "_embedding_bag_dense_backward",
                f"aten::_embedding_bag_dense_backward({_ARGS}) -> Tensor",
                embedding_bag_dense_backward,
            ),
            Kernel(
                "_embedding_bag_dense_backward.out",
                f"aten::_embedding_bag_dense_backward.out({_ARGS}, *, Tensor(a!) out) -> Tensor(a!)",
                with_out(embedding_bag_dense_backward),
            ),
        ),
        impl=embedding_bag_dense_backward,
        upstream="aten/src/ATen/native/cuda/EmbeddingBag.cu: _embedding_bag_dense_backward_cuda",
        min_torch=(2, 1),
        related_ops=("aten::embedding_bag", "aten::_embedding_bag", "aten::_embedding_bag_backward"),
        summary="sorted scatter sums of gradient rows (max: of gradient cells at the arg-max rows)",
    ),
)
