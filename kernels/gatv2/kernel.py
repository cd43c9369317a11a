"""GATv2 attention over each image's complete centroid graph, in one program per image.

Given the two projections of an image's kappa centroids, ``source = W_l z + b_l`` and
``target = W_r z + b_r`` (``(B, kappa, C)``, from the dense matmuls), the output is
``out_i = sum_j alpha_ij source_j + bias`` with ``alpha_ij = softmax_j(a . LeakyReLU(target_i +
source_j))``, j over every centroid of the image including i (paper Eq. 2-3). As eager PyTorch
that is five small ops (broadcast add, LeakyReLU, the product with ``a``, softmax, the weighted
sum) and as many launches; here one program per image does them all on a few kilobytes, the
scores accumulated over channel slices in float32. NaN propagates into its own image only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import next_power_of_2
from ..tuning import Tunable, TuneCase, batch_bucket, configs, per_width, split_launch_options


@triton.jit
def _gatv2_attention_kernel(
    source_ptr,  # *T (B, KAPPA, C) contiguous: W_l z + b_l
    target_ptr,  # *T (B, KAPPA, C) contiguous: W_r z + b_r
    att_ptr,  # *float (C,): the attention vector a
    bias_ptr,  # *float (C,): the output bias
    out_ptr,  # *T (B, KAPPA, C) contiguous
    C,
    negative_slope,
    KAPPA: tl.constexpr,
    KAPPA_PAD: tl.constexpr,  # power of two >= KAPPA
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    ks = tl.arange(0, KAPPA_PAD)
    k_mask = ks < KAPPA
    chans = tl.arange(0, BLOCK_C)
    base = b * KAPPA * C
    score = tl.zeros([KAPPA_PAD, KAPPA_PAD], dtype=tl.float32)  # (target i, source j)
    for c0 in range(0, C, BLOCK_C):
        c_mask = c0 + chans < C
        offsets = base + ks[:, None] * C + c0 + chans[None, :]
        mask = k_mask[:, None] & c_mask[None, :]
        src = tl.load(source_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        tgt = tl.load(target_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        att = tl.load(att_ptr + c0 + chans, mask=c_mask, other=0.0).to(tl.float32)
        pair = tgt[:, None, :] + src[None, :, :]  # (i, j, channel)
        pair = tl.where(pair >= 0, pair, pair * negative_slope)
        score += tl.sum(pair * att[None, None, :], axis=2)
    score = tl.where(k_mask[None, :], score, float("-inf"))  # only real sources
    score = score - tl.max(score, axis=1)[:, None]
    weight = tl.exp(score)
    alpha = weight / tl.sum(weight, axis=1)[:, None]  # (i, j)
    for c0 in range(0, C, BLOCK_C):
        c_mask = c0 + chans < C
        offsets = base + ks[:, None] * C + c0 + chans[None, :]
        mask = k_mask[:, None] & c_mask[None, :]
        src = tl.load(source_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        bias = tl.load(bias_ptr + c0 + chans, mask=c_mask, other=0.0).to(tl.float32)
        out = tl.sum(alpha[:, :, None] * src[None, :, :], axis=1) + bias[None, :]
        tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


# Spill-free for sm_80 and sm_90 (tests/kernels/test_aot_compile.py).
_SPACE = configs(
    ("BLOCK_C", "num_warps", "num_stages"), [(32, 4, 1), (64, 4, 1), (128, 4, 1), (64, 2, 1)]
)


def _layer_launch(B: int, N: int, C: int, kappa: int, K: int, dtype: torch.dtype):
    """A DEGC layer's centroid graph: kappa centroids of C channels per image."""
    return dtype, {"B": B, "kappa": kappa, "C": C}


def _tune_call(shape: dict, dtype: torch.dtype, device: torch.device):
    size = (shape["B"], shape["kappa"], shape["C"])
    source, target = (torch.randn(size, device=device).to(dtype) for _ in range(2))
    att, bias = (torch.randn(shape["C"], device=device).to(dtype) for _ in range(2))
    return TuneCase(
        lambda config: launch_gatv2_attention(source, target, att, bias, 0.2, config=config)
    )


GATV2_ATTENTION = Tunable(
    name="gatv2_attention",
    kernels=[_gatv2_attention_kernel],
    space=per_width(_SPACE),
    default=per_width({"BLOCK_C": 64, "num_warps": 4, "num_stages": 1}),
    interpret_space=[
        {"BLOCK_C": 8, "num_warps": 4, "num_stages": 1},
        {"BLOCK_C": 32, "num_warps": 4, "num_stages": 1},
    ],
    bucket_fn=lambda B, kappa, C: f"k{kappa}/C{C}/B{batch_bucket(B)}",
    layer_launch=_layer_launch,
    tune_call=_tune_call,
    scalar_types={"negative_slope": "fp32"},
    aot_constants=lambda dtype, config: {"KAPPA": 6, "KAPPA_PAD": 8},
)


def launch_gatv2_attention(
    source: torch.Tensor,
    target: torch.Tensor,
    att: torch.Tensor,
    bias: torch.Tensor,
    negative_slope: float,
    *,
    out: torch.Tensor | None = None,
    config: dict | None = None,
) -> torch.Tensor:
    """Launch :func:`_gatv2_attention_kernel`: source, target ``(B, kappa, C)``, att and bias
    ``(C,)`` -> ``(B, kappa, C)`` in source's dtype. ``out`` may pass a preallocated output (the
    tests poison it); ``config`` overrides the tuned config."""
    B, kappa, C = source.shape
    source, target = source.contiguous(), target.to(source.dtype).contiguous()
    out = torch.empty_like(source) if out is None else out
    if B == 0 or kappa == 0 or C == 0:
        return out
    config = config or GATV2_ATTENTION.config(
        source.device, GATV2_ATTENTION.bucket(source.dtype, B=B, kappa=kappa, C=C)
    )
    meta, opts = split_launch_options(config)
    kappa_pad = max(2, next_power_of_2(kappa))
    _gatv2_attention_kernel[(B,)](
        source, target, att.detach().contiguous(), bias.detach().contiguous(), out, C,
        float(negative_slope), KAPPA=kappa, KAPPA_PAD=kappa_pad, **meta, **opts,
    )  # fmt: skip
    return out
