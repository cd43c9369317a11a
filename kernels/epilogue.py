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

from ._tuning import TRITON_TYPES, Tunable, configs, per_width, rows_bucket, split_launch_options

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
_SPACE = configs(
    ("BLOCK_M", "BLOCK_C", "num_warps", "num_stages"),
    [(16, 128, 4, 1), (32, 128, 4, 1), (32, 64, 4, 1), (64, 64, 4, 1), (64, 128, 8, 1)],
)

SEGMENT_NORM_GELU = Tunable(
    name="segment_norm_gelu",
    kernels=[_segment_norm_gelu_kernel],
    space=per_width(_SPACE),
    # 128-channel slices: the models' 2C (384, 640, 1280) are multiples of 128.
    default=per_width({"BLOCK_M": 32, "BLOCK_C": 128, "num_warps": 4, "num_stages": 1}),
    interpret_space=[
        {"BLOCK_M": 16, "BLOCK_C": 32, "num_warps": 4, "num_stages": 1},
        {"BLOCK_M": 8, "BLOCK_C": 64, "num_warps": 4, "num_stages": 1},
    ],
    bucket_fn=lambda M, C: f"C{C}/M{rows_bucket(M)}",
    signature_fn=lambda dtype, config: (
        {
            "acc_ptr": f"*{TRITON_TYPES[dtype]}",
            "table_ptr": f"*{TRITON_TYPES[dtype]}",
            "segment_ptr": "*i32",
            "bias_ptr": "*fp32",
            "weight_ptr": "*fp32",
            "shift_ptr": "*fp32",
            "mean_ptr": "*fp32",
            "var_ptr": "*fp32",
            "out_ptr": f"*{TRITON_TYPES[dtype]}",
            "M": "i32",
            "C": "i32",
            "P": "i32",
            "stride_am": "i32",
            "eps": "fp32",
            "BLOCK_M": "constexpr",
            "BLOCK_C": "constexpr",
        },
        {"BLOCK_M": config["BLOCK_M"], "BLOCK_C": config["BLOCK_C"]},
    ),
)


def segment_norm_gelu(
    acc: torch.Tensor,
    table: torch.Tensor,
    segment: torch.Tensor,
    bias: torch.Tensor,
    weight: torch.Tensor,
    shift: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
    *,
    out: torch.Tensor | None = None,
    config: dict | None = None,
) -> torch.Tensor:
    """Launch :func:`_segment_norm_gelu_kernel`: acc ``(M, C)``, table ``(P, C)``, segment
    ``(M,)`` int32 and the ``(C,)`` parameters -> ``(M, C)`` in acc's dtype. ``out`` may pass a
    preallocated output (the tests poison it); ``config`` overrides the tuned config."""
    M, C = acc.shape
    if acc.stride(1) != 1:
        acc = acc.contiguous()
    table = table.to(acc.dtype).contiguous()  # both the module's dtype: no copy in the model
    vectors = [t.detach().contiguous() for t in (bias, weight, shift, running_mean, running_var)]
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
