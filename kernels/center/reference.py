"""PyTorch reference of the centred nodes (the contract of the kernel; see :mod:`kernels.reference`
for the conventions shared by every reference)."""

from __future__ import annotations

import torch

from .._common import compute_dtype

__all__ = ["center_tokens"]


def center_tokens(x: torch.Tensor) -> torch.Tensor:
    """A feature map's nodes, mean-centred per image and channel: ``(B, C, H, W) -> (B, N, C)``
    (node ``n = h * W + w``), contiguous, in x's dtype; the mean and the difference in float32
    (float64 for float64 inputs), rounded once."""
    t = x.flatten(2).transpose(1, 2).to(compute_dtype(x))
    return (t - t.mean(dim=1, keepdim=True)).to(x.dtype).contiguous()
