"""PyTorch reference of the centroid graph's GATv2 attention (the contract of the kernel; see
:mod:`kernels.reference` for the conventions shared by every reference)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._common import compute_dtype


def gatv2_attention(
    source: Tensor, target: Tensor, att: Tensor, bias: Tensor, negative_slope: float
) -> Tensor:
    """``out_i = sum_j softmax_j(att . LeakyReLU(target_i + source_j)) source_j + bias`` over
    each image's centroids: source, target ``(B, kappa, C)``, att and bias ``(C,)`` -> ``(B, kappa,
    C)`` in source's dtype, computed in float32 (float64 for float64 inputs)."""
    dtype = compute_dtype(source)
    s, t = source.to(dtype), target.to(dtype)
    pair = F.leaky_relu(t.unsqueeze(2) + s.unsqueeze(1), negative_slope)
    alpha = torch.softmax(pair @ att.to(dtype), dim=-1)
    return (alpha @ s + bias.to(dtype)).to(source.dtype)
