"""The local update's inference epilogue in one pass: partition term, batch norm and GELU.

A G-GCN's MLP output for node v is ``GELU(BN(acc[v] + bias + table[segment[v]]))``: ``acc`` the
node's products (``(M, C)``, from the dense matmuls), ``table`` one row per partition (its
centroid's products, ``(P, C)``), then the linear bias, the batch norm with its running
statistics (inference) and the exact (erf) GELU. As eager PyTorch that is five passes over the
``(M, C)`` activations (bias, gather, add, batch norm, GELU); here each program reads a tile of
``acc`` and the partition rows it needs (L2 hits: P rows) and writes the result once. The batch
norm's scale and shift are formed in the kernel from its parameters, so nothing is prepared on
the host. Segment ids are clamped into ``[0, P)``: no input makes a program read outside
``table``. NaN propagates as in the PyTorch ops.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..tuning import Tunable, TuneCase, configs, per_width, rows_bucket, split_launch_options

_SQRT_HALF = tl.constexpr(0.7071067811865476)


@triton.jit
def _segment_norm_gelu_kernel(
    acc_ptr,  # *T (M, C): the node products, row stride stride_am, unit column stride
    table_ptr,  # *T (P, C) contiguous: one row per partition
    segment_ptr,  # *i32 (M,): the partition of every row
    bias_ptr,  # *float (C,): the linear layer's bias (any float dtype: read as float32)
    weight_ptr,  # *float (C,): batch norm weight
    shift_ptr,  # *float (C,): batch norm bias
    mean_ptr,  # *float (C,): running mean
    var_ptr,  # *float (C,): running variance
    out_ptr,  # *T (M, C) contiguous: the result
    M,
    C,
    P,
    stride_am,
    eps,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_mask = rows < M
    col_mask = cols < C
    mask = row_mask[:, None] & col_mask[None, :]
    part = tl.load(segment_ptr + rows, mask=row_mask, other=0)
    part = tl.minimum(tl.maximum(part, 0), P - 1).to(tl.int64)
    acc = tl.load(acc_ptr + rows[:, None].to(tl.int64) * stride_am + cols[None, :], mask=mask)
    term = tl.load(table_ptr + part[:, None] * C + cols[None, :], mask=mask)
    bias = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    var = tl.load(var_ptr + cols, mask=col_mask, other=1.0).to(tl.float32)
    mean = tl.load(mean_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    scale = weight / tl.sqrt(var + eps)
    shift = tl.load(shift_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    shift += scale * (bias - mean)
    v = (acc.to(tl.float32) + term.to(tl.float32)) * scale[None, :] + shift[None, :]
    y = 0.5 * v * (1.0 + tl.math.erf(v * _SQRT_HALF))
    tl.store(out_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], y, mask=mask)


# Spill-free for sm_80 and sm_90 (tests/kernels/test_aot_compile.py): an elementwise kernel.
_KEYS = ("BLOCK_M", "BLOCK_C", "num_warps", "num_stages")
_SPACE = configs(
    _KEYS, [(16, 128, 4, 1), (32, 128, 4, 1), (32, 64, 4, 1), (64, 64, 4, 1), (64, 128, 8, 1)]
)


def _layer_launch(B: int, N: int, C: int, kappa: int, K: int, dtype: torch.dtype):
    """A DEGC layer's local update: its MLP's (B*N, 2C) activations."""
    return dtype, {"M": B * N, "C": 2 * C}


def _tune_call(shape: dict, dtype: torch.dtype, device: torch.device):
    M, C = shape["M"], shape["C"]
    acc = torch.randn(M, C, device=device).to(dtype)
    table = torch.randn(max(1, M // 49), C, device=device).to(dtype)
    segment = torch.randint(0, table.shape[0], (M,), dtype=torch.int32, device=device)
    norm = torch.rand(5, C, device=device).to(dtype) + 0.5
    return TuneCase(
        lambda config: launch_segment_norm_gelu(acc, table, segment, norm, 1e-5, config=config)
    )


SEGMENT_NORM_GELU = Tunable(
    name="segment_norm_gelu",
    kernels=[_segment_norm_gelu_kernel],
    space=per_width(_SPACE),
    # 128-channel slices: the models' 2C (384, 640, 1280) are multiples of 128.
    default=per_width({"BLOCK_M": 32, "BLOCK_C": 128, "num_warps": 4, "num_stages": 1}),
    interpret_space=configs(_KEYS, [(16, 32, 4, 1), (8, 64, 4, 1)]),
    bucket_fn=lambda M, C: f"C{C}/M{rows_bucket(M)}",
    layer_launch=_layer_launch,
    tune_call=_tune_call,
    pointer_types={
        "segment_ptr": "*i32",
        **{f"{name}_ptr": "*fp32" for name in ("bias", "weight", "shift", "mean", "var")},
    },
    scalar_types={"eps": "fp32"},
)


def launch_segment_norm_gelu(
    acc: torch.Tensor,
    table: torch.Tensor,
    segment: torch.Tensor,
    norm: torch.Tensor,
    eps: float,
    *,
    out: torch.Tensor | None = None,
    config: dict | None = None,
) -> torch.Tensor:
    """Launch :func:`_segment_norm_gelu_kernel`: acc ``(M, C)``, table ``(P, C)``, segment
    ``(M,)`` int32 and ``norm (5, C)``, the stacked linear bias, batch-norm weight, batch-norm
    bias, running mean and running variance -> ``(M, C)`` in acc's dtype. ``out`` may pass a
    preallocated output (the tests poison it); ``config`` overrides the tuned config."""
    M, C = acc.shape
    if acc.stride(1) != 1:
        acc = acc.contiguous()
    table = table.to(acc.dtype).contiguous()  # both the module's dtype: no copy in the model
    vectors = norm.detach().contiguous().unbind(0)  # five (C,) rows: views, no copy
    out = torch.empty(M, C, dtype=acc.dtype, device=acc.device) if out is None else out
    if M == 0 or C == 0:
        return out
    config = config or SEGMENT_NORM_GELU.config(
        acc.device, SEGMENT_NORM_GELU.bucket(acc.dtype, M=M, C=C)
    )
    meta, opts = split_launch_options(config)
    grid = (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(C, meta["BLOCK_C"]))
    _segment_norm_gelu_kernel[grid](
        acc, table, segment, *vectors, out, M, C, table.shape[0], acc.stride(0), float(eps),
        **meta, **opts,
    )  # fmt: skip
    return out
