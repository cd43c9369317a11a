"""PyTorch reference of the local update's inference epilogue (the contract of the kernel; see
:mod:`kernels.reference` for the conventions shared by every reference)."""

from __future__ import annotations

import torch

from .._common import compute_dtype

__all__ = ["segment_norm_gelu"]


def segment_norm_gelu(
    acc: torch.Tensor,
    table: torch.Tensor,
    segment: torch.Tensor,
    norm: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """``GELU(BN(acc + bias + table[segment]))`` with the batch norm's running statistics.

    Args:
        acc: ``(M, O)`` float node products; table: ``(P, O)``, one row per partition;
            segment: ``(M,)`` int, the partition of every row (clamped into ``[0, P)``, as the
            kernel does); norm: ``(5, O)``, the linear bias, the batch norm's weight, bias
            (shift), running mean and running variance, stacked; eps > 0.

    Returns:
        ``(M, O)`` in acc's dtype, computed in float32 (float64 for float64 inputs) with the
        exact (erf) GELU, rounded once.
    """
    dtype = compute_dtype(acc)
    bias, weight, shift, running_mean, running_var = norm.unbind(0)
    rows = segment.long().clamp(0, max(0, table.shape[0] - 1))
    v = acc.to(dtype) + bias.to(dtype) + table.to(dtype).index_select(0, rows)
    scale = weight.to(dtype) / torch.sqrt(running_var.to(dtype) + eps)
    v = (v - running_mean.to(dtype)) * scale + shift.to(dtype)
    return torch.nn.functional.gelu(v).to(acc.dtype)
