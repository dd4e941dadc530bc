"""Deterministic loss kernels: nll_loss2d forward as a gather and a tree reduction, ctc_loss backward by gathers.

torch's CUDA nll_loss2d forward sums per-block partials into the output with atomicAdd, and its
ctc_loss backward scatters alpha*beta terms into the gradient with atomicAdd.
"""
from __future__ import annotations

import torch

from detrun.patches._common import compute_dtype, deterministic_scatter_sum, with_out
from detrun.patches._core import Kernel, Patch

REDUCTION_NONE, REDUCTION_MEAN, REDUCTION_SUM = 0, 1, 2
# Up to this many one-hot elements (N * states * classes) the per-label sums are one batched GEMM;
# beyond it (large vocabularies) a sorted scatter sum avoids materialising the one-hot tensor.
CTC_ONE_HOT_MAX_ELEMENTS = 1 << 24


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


def _padded_targets(targets: torch.Tensor, target_lengths: list[int], width: int) -> torch.Tensor:
    """Return targets as an (N, width) int64 matrix, from either the padded or the concatenated layout."""
    batch = len(target_lengths)
    if targets.dim() == 2:
        padded = targets[:, :width].to(torch.int64)
        if padded.shape[1] < width:
            padded = torch.nn.functional.pad(padded, (0, width - padded.shape[1]))
        return padded
    lengths = torch.tensor(target_lengths, dtype=torch.int64, device=targets.device)
    starts = torch.cumsum(lengths, 0) - lengths
    positions = torch.arange(width, device=targets.device, dtype=torch.int64)
    inside = positions[None, :] < lengths[:, None]
    flat = torch.where(inside, starts[:, None] + positions[None, :], torch.zeros((), dtype=torch.int64, device=targets.device))
    values = targets.to(torch.int64)[flat.clamp(max=max(targets.numel() - 1, 0))] if targets.numel() else torch.zeros_like(flat)
    return torch.where(inside, values, torch.zeros_like(values)).view(batch, width)


def ctc_loss_backward(
    grad: torch.Tensor,
    log_probs: torch.Tensor,
    targets: torch.Tensor,
    input_lengths: list[int] | torch.Tensor,
    target_lengths: list[int] | torch.Tensor,
    neg_log_likelihood: torch.Tensor,
    log_alpha: torch.Tensor,
    blank: int,
    zero_infinity: bool = False,
) -> torch.Tensor:
    """Return d(loss)/d(log_probs) of CTC from alpha (given) and beta, with no atomics.

    beta is alpha of the time-reversed problem, so torch's own CTC forward (which computes alpha
    with one sequential loop per sequence, deterministically) provides it. The per-label sums of
    alpha * beta are a GEMM against the one-hot extended targets (or a sorted scatter sum).
    """
    input_lengths = [int(v) for v in (input_lengths.tolist() if isinstance(input_lengths, torch.Tensor) else input_lengths)]
    target_lengths = [int(v) for v in (target_lengths.tolist() if isinstance(target_lengths, torch.Tensor) else target_lengths)]
    steps, batch, classes = log_probs.shape
    device = log_probs.device
    extended = log_alpha.shape[2]  # 2 * max_target_length + 1
    width = (extended - 1) // 2
    labels = _padded_targets(targets, target_lengths, width)
    in_len = torch.tensor(input_lengths, dtype=torch.int64, device=device)
    tgt_len = torch.tensor(target_lengths, dtype=torch.int64, device=device)

    # Time-reverse each sequence within its own length, and reverse each target within its own length.
    time = torch.arange(steps, device=device, dtype=torch.int64)
    source_time = torch.where(time[:, None] < in_len[None, :], in_len[None, :] - 1 - time[:, None], time[:, None])
    reversed_log_probs = log_probs.gather(0, source_time[:, :, None].expand(steps, batch, classes))
    column = torch.arange(width, device=device, dtype=torch.int64)
    source_column = torch.where(column[None, :] < tgt_len[:, None], tgt_len[:, None] - 1 - column[None, :], column[None, :])
    reversed_labels = labels.gather(1, source_column) if width else labels
    _, reversed_alpha = torch.ops.aten._ctc_loss(reversed_log_probs, reversed_labels, input_lengths, target_lengths, blank, False)

    # beta[b, t, s] = reversed_alpha[b, T_b - 1 - t, 2 S_b - s] where both are in range, else -inf.
    state = torch.arange(extended, device=device, dtype=torch.int64)
    beta_time = (in_len[:, None] - 1 - time[None, :]).clamp(min=0)  # (N, T)
    beta_state = (2 * tgt_len[:, None] - state[None, :]).clamp(min=0)  # (N, S')
    valid = (time[None, :, None] < in_len[:, None, None]) & (state[None, None, :] <= 2 * tgt_len[:, None, None])
    flat_index = beta_time[:, :, None] * extended + beta_state[:, None, :]
    log_beta = reversed_alpha.reshape(batch, -1).gather(1, flat_index.reshape(batch, -1)).view(batch, steps, extended)
    negative_infinity = torch.full((), float("-inf"), dtype=log_probs.dtype, device=device)
    log_beta = torch.where(valid, log_beta, negative_infinity)
    alpha = torch.where(valid, log_alpha, negative_infinity)

    # Extended label of each state: blank at even states, the target at odd ones.
    extended_labels = torch.full((batch, extended), blank, dtype=torch.int64, device=device)
    if width:
        extended_labels[:, 1::2] = labels
    joint = alpha + log_beta  # (N, T, S')
    shift = joint.amax(dim=2, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    weights = torch.exp(joint - shift)
    if batch * extended * classes <= CTC_ONE_HOT_MAX_ELEMENTS:
        one_hot = torch.nn.functional.one_hot(extended_labels, classes).to(weights.dtype)  # (N, S', C)
        per_label = torch.bmm(weights, one_hot)  # (N, T, C): a deterministic GEMM
    else:
        rows = (torch.arange(batch * steps, device=device)[:, None] * classes).view(batch, steps, 1)
        flat = (rows + extended_labels[:, None, :]).reshape(-1)
        per_label = deterministic_scatter_sum(batch * steps * classes, flat, weights.reshape(-1)).view(batch, steps, classes)
    log_per_label = torch.log(per_label) + shift  # log sum over states with label c of alpha * beta

    log_probs_btc = log_probs.transpose(0, 1)
    nll = neg_log_likelihood.to(log_probs.dtype)[:, None, None]
    result = (torch.exp(log_probs_btc) - torch.exp(log_per_label + nll - log_probs_btc)) * grad.to(log_probs.dtype)[:, None, None]
    keep = time[None, :, None] < in_len[:, None, None]
    if zero_infinity:
        keep = keep & ~torch.isinf(neg_log_likelihood)[:, None, None]
    result = torch.where(keep, result, torch.zeros((), dtype=result.dtype, device=device))
    return result.transpose(0, 1).contiguous()


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
    Patch(
        name="ctc_loss_backward",
        # Mirrors aten/src/ATen/native/cuda/LossCTC.cu: ctc_loss_backward_gpu_template
        # (native_functions.yaml: _ctc_loss_backward and _ctc_loss_backward.Tensor, dispatch CUDA).
        # F.ctc_loss uses cuDNN instead when its conditions hold (int32 targets on the CPU, blank 0, ...).
        kernels=(
            Kernel(
                "_ctc_loss_backward",
                "aten::_ctc_loss_backward(Tensor grad, Tensor log_probs, Tensor targets, int[] input_lengths, "
                "int[] target_lengths, Tensor neg_log_likelihood, Tensor log_alpha, int blank, bool zero_infinity=False)"
                " -> Tensor",
                ctc_loss_backward,
            ),
            Kernel(
                "_ctc_loss_backward.Tensor",
                "aten::_ctc_loss_backward.Tensor(Tensor grad, Tensor log_probs, Tensor targets, Tensor input_lengths, "
                "Tensor target_lengths, Tensor neg_log_likelihood, Tensor log_alpha, int blank, bool zero_infinity=False)"
                " -> Tensor",
                ctc_loss_backward,
            ),
        ),
        impl=ctc_loss_backward,
        upstream="aten/src/ATen/native/cuda/LossCTC.cu: ctc_loss_backward_gpu_template",
        min_torch=(2, 1),
        related_ops=("aten::ctc_loss", "aten::_ctc_loss"),
        summary="beta as torch's (deterministic) CTC forward on the time-reversed problem; per-label sums by GEMM",
    ),
)
