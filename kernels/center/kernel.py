"""A DEGC layer's nodes: the feature map's columns as rows, mean-centred per image and channel.

``(B, C, H, W) -> (B, N, C)``, node ``n = h * W + w``, ``out[b, n] = x[b, :, n] - mean_n x[b]``.
As eager PyTorch that is a mean, a subtraction and a transposed copy: three passes and launches.
Here one program per (image, channel slice) sums its channels over the image's nodes, then reads
them again (L2 hits) and writes them centred, transposed into rows. Sums are float32 in a fixed
order (no atomics). NaN propagates into its image and channel only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..tuning import Tunable, TuneCase, configs, per_width, rows_bucket, split_launch_options


@triton.jit
def _center_tokens_kernel(
    x_ptr,  # *T (B, C, N): the feature map, strides (stride_xb, stride_xc, stride_xn)
    out_ptr,  # *T (B, N, C) contiguous: the centred nodes
    N,
    C,
    stride_xb,
    stride_xc,
    stride_xn,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    chan_mask = chans < C
    nodes = tl.arange(0, BLOCK_N)
    x_img = x_ptr + b * stride_xb + chans[:, None] * stride_xc  # (BLOCK_C, 1) channel rows
    total = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        mask = chan_mask[:, None] & (n0 + nodes < N)[None, :]
        total += tl.load(x_img + (n0 + nodes)[None, :] * stride_xn, mask=mask, other=0.0).to(
            tl.float32
        )
    mean = tl.sum(total, axis=1) / N  # (BLOCK_C,)
    out_img = out_ptr + b * N * C
    for n0 in range(0, N, BLOCK_N):
        mask = chan_mask[:, None] & (n0 + nodes < N)[None, :]
        tile = tl.load(x_img + (n0 + nodes)[None, :] * stride_xn, mask=mask, other=0.0)
        centred = tile.to(tl.float32) - mean[:, None]
        tl.store(
            out_img + (n0 + nodes)[None, :].to(tl.int64) * C + chans[:, None],
            centred.to(out_ptr.dtype.element_ty),
            mask=mask,
        )


# Spill-free for sm_80 and sm_90 in every dtype under Triton 3.6 and 3.8
# (tests/kernels/test_aot_compile.py); (128, 32, 4) and (256, 32, 8) spill in fp16.
_KEYS = ("BLOCK_N", "BLOCK_C", "num_warps", "num_stages")
_SPACE = configs(
    _KEYS, [(64, 32, 4, 1), (64, 64, 4, 1), (128, 64, 8, 1), (32, 32, 4, 1), (64, 16, 4, 1)]
)


def _layer_launch(B: int, N: int, C: int, kappa: int, K: int, dtype: torch.dtype):
    """A DEGC layer centres its (B, C, H, W) input's N = H * W nodes."""
    return dtype, {"B": B, "N": N, "C": C}


def _tune_call(shape: dict, dtype: torch.dtype, device: torch.device):
    side = int(shape["N"] ** 0.5)
    x = torch.randn(shape["B"], shape["C"], side, shape["N"] // side, device=device).to(dtype)
    return TuneCase(lambda config: launch_center_tokens(x, config=config))


CENTER_TOKENS = Tunable(
    name="center_tokens",
    kernels=[_center_tokens_kernel],
    space=per_width(_SPACE),
    default=per_width({"BLOCK_N": 64, "BLOCK_C": 64, "num_warps": 4, "num_stages": 1}),
    interpret_space=configs(_KEYS, [(16, 8, 4, 1), (32, 16, 4, 1)]),
    bucket_fn=lambda B, N, C: f"N{N}/C{C}/M{rows_bucket(B * N)}",
    layer_launch=_layer_launch,
    tune_call=_tune_call,
    # The model's maps flatten to a unit node stride: the JIT makes it a constant.
    aot_constants=lambda dtype, config: {"stride_xn": 1},
)


def launch_center_tokens(
    x: torch.Tensor, *, out: torch.Tensor | None = None, config: dict | None = None
) -> torch.Tensor:
    """Launch :func:`_center_tokens_kernel`: x ``(B, C, H, W)`` (any strides whose H and W
    flatten to one node stride) -> ``(B, N, C)`` contiguous in x's dtype. ``out`` may pass a
    preallocated output (the tests poison it); ``config`` overrides the tuned config."""
    B, C, H, W = x.shape
    N = H * W
    flat = x.flatten(2)  # a view when H and W flatten (contiguous or channels-last maps)
    out = torch.empty(B, N, C, dtype=x.dtype, device=x.device) if out is None else out
    if B == 0 or N == 0 or C == 0:
        return out
    config = config or CENTER_TOKENS.config(x.device, CENTER_TOKENS.bucket(x.dtype, B=B, N=N, C=C))
    meta, opts = split_launch_options(config)
    grid = (B, triton.cdiv(C, meta["BLOCK_C"]))
    _center_tokens_kernel[grid](
        flat, out, N, C, flat.stride(0), flat.stride(1), flat.stride(2), **meta, **opts
    )
    return out
