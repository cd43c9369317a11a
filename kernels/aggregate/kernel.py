"""Fused gather + max(-relative) aggregation over K neighbours, and its backward.

Forward: ``out[v, c] = max_k x[nbr[v, k], c] - x[v, c]`` (``relative``) or the plain max, without
materialising the ``(M, K, C)`` gathered tensor: each program streams K neighbour rows of a tile
and keeps a running max and the winning slot. The slot (uint8, first slot among equal maxima) is
saved for the backward, which starts from ``-grad`` (relative) or zeros and routes ``grad[v, c]``
to row ``nbr[v, slot[v, c]]`` with relaxed float atomics: its sums are not bit-reproducible
(their order varies); ``torch.use_deterministic_algorithms(True)`` takes the reference's
deterministic scatter instead (``kernels/aggregate/op.py``). Neighbour indices are clamped into
``[0, M)`` so no input makes a kernel read or write outside its tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import next_power_of_2
from ..tuning import Tunable, TuneCase, configs, grid, per_width, rows_bucket, split_launch_options
from . import reference


@triton.jit
def _valid_rows(index, M):
    """Row indices clamped to ``[0, M)`` as int64: a kernel never reads outside x, whatever
    ``nbr`` holds (the model's neighbours are always valid; this is the guard for any caller)."""
    return tl.minimum(tl.maximum(index, 0), M - 1).to(tl.int64)


@triton.jit
def _max_aggregate_kernel(
    x_ptr,  # *T (M, C): features, row stride stride_xm, unit column stride
    nbr_ptr,  # *i32 (M, K): neighbour rows of every row
    out_ptr,  # *T (M, C) contiguous: the aggregation
    slot_ptr,  # *u8 (M, C) contiguous: winning neighbour slot (written if SAVE_SLOT)
    M,
    C,
    stride_xm,
    K: tl.constexpr,
    RELATIVE: tl.constexpr,
    SAVE_SLOT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_mask = rows < M
    mask = row_mask[:, None] & (cols[None, :] < C)
    rows64 = rows.to(tl.int64)
    best = tl.full([BLOCK_M, BLOCK_C], float("-inf"), dtype=tl.float32)
    best_slot = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.int32)
    for k in range(K):
        source = _valid_rows(tl.load(nbr_ptr + rows64 * K + k, mask=row_mask, other=0), M)
        # (masked lanes are never stored: they need no fill value)
        values = tl.load(x_ptr + source[:, None] * stride_xm + cols[None, :], mask=mask)
        values = values.to(tl.float32)
        if SAVE_SLOT:
            # Strict: the first slot keeps a tie. A NaN wins over a number and then stays, so
            # NaN propagates as in torch.amax (written out: GPU and interpreter differ on NaN).
            better = (values > best) | ((values != values) & (best == best))
            best = tl.where(better, values, best)
            best_slot = tl.where(better, k, best_slot)
        else:  # only the maximum (inference): one NaN-propagating max per value
            best = tl.maximum(best, values, propagate_nan=tl.PropagateNan.ALL)
    if RELATIVE:
        best -= tl.load(x_ptr + rows64[:, None] * stride_xm + cols[None, :], mask=mask).to(
            tl.float32
        )
    offsets = rows64[:, None] * C + cols[None, :]
    tl.store(out_ptr + offsets, best.to(out_ptr.dtype.element_ty), mask=mask)
    if SAVE_SLOT:
        tl.store(slot_ptr + offsets, best_slot.to(tl.uint8), mask=mask)


@triton.jit
def _max_aggregate_backward_kernel(
    grad_ptr,  # *T (M, C) contiguous: gradient of the aggregation
    nbr_ptr,  # *i32 (M, K)
    slot_ptr,  # *u8 (M, C): winning slots from the forward
    grad_x_ptr,  # *f32 (M, C) contiguous: -grad (relative) or zeros; neighbour terms added here
    M,
    C,
    K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows < M)[:, None] & (cols[None, :] < C)
    rows64 = rows.to(tl.int64)
    offsets = rows64[:, None] * C + cols[None, :]
    grad = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    slot = tl.minimum(tl.load(slot_ptr + offsets, mask=mask, other=0).to(tl.int64), K - 1)
    source = _valid_rows(tl.load(nbr_ptr + rows64[:, None] * K + slot, mask=mask, other=0), M)
    # Several rows can share a neighbour: accumulate with atomics. Relaxed: a sum needs no
    # ordering, and the default (acq_rel) fences every add with a GPU-wide barrier.
    tl.atomic_add(grad_x_ptr + source * C + cols[None, :], grad, mask=mask, sem="relaxed")


# Spill-free for sm_80 and sm_90 at every width (tests/kernels/test_aot_compile.py).
_FORWARD_SPACE = grid(BLOCK_M=(8, 16, 32), BLOCK_C=(64, 128, 256), num_warps=(4,), num_stages=(2,))
_FORWARD_SPACE += configs(
    ("BLOCK_M", "BLOCK_C", "num_warps", "num_stages"),
    [(16, 256, 8, 2), (32, 128, 8, 2), (32, 256, 8, 2)],
)
# The backward's atomics: 256-channel tiles take 8 warps.
_BACKWARD_SPACE = [
    {"BLOCK_M": m, "BLOCK_C": c, "num_warps": 8 if c == 256 else 4, "num_stages": 1}
    for m in (8, 16, 32)
    for c in (64, 128, 256)
] + [{"BLOCK_M": 64, "BLOCK_C": 64, "num_warps": 4, "num_stages": 1}]

_INTERPRET_SPACE = [
    {"BLOCK_M": 8, "BLOCK_C": 32, "num_warps": 4, "num_stages": 1},
    {"BLOCK_M": 16, "BLOCK_C": 32, "num_warps": 4, "num_stages": 1},
]


def _layer_launch(B: int, N: int, C: int, kappa: int, K: int, dtype: torch.dtype):
    """A DEGC layer's aggregation over its (B*N, C) nodes (forward and backward alike)."""
    return dtype, {"M": B * N, "C": C, "K": K}


def _bucket(M: int, C: int, K: int) -> str:
    return f"C{C}/K{next_power_of_2(K)}/M{rows_bucket(M)}"


def _tune_forward(shape: dict, dtype: torch.dtype, device: torch.device):
    x, nbr = _tuning_inputs(shape, dtype, device)
    return TuneCase(lambda config: launch_max_aggregate(x, nbr, True, True, config=config))


def _tune_backward(shape: dict, dtype: torch.dtype, device: torch.device):
    x, nbr = _tuning_inputs(shape, dtype, device)
    _, slot = reference.max_aggregate(x.cpu(), nbr.cpu(), True)
    slot = slot.to(device)
    grad = torch.randn(shape["M"], shape["C"], device=device).to(dtype)
    return TuneCase(
        lambda config: launch_max_aggregate_backward(grad, nbr, slot, True, config=config)
    )


def _tuning_inputs(shape: dict, dtype: torch.dtype, device: torch.device):
    M, C, K = shape["M"], shape["C"], shape["K"]
    x = torch.randn(M, C, device=device).to(dtype)
    nbr = torch.randint(0, M, (M, K), dtype=torch.int32, device=device)
    return x, nbr


#: What the forward and the backward share: their launch shapes, buckets and interpreter tiles.
_SHAPES = {"interpret_space": _INTERPRET_SPACE, "bucket_fn": _bucket, "layer_launch": _layer_launch}

MAX_AGGREGATE = Tunable(
    name="max_aggregate",
    kernels=[_max_aggregate_kernel, _valid_rows],
    space=per_width(_FORWARD_SPACE),
    # 64-channel slices: the models' C (192, 320, 640) are multiples, so no lane idles (128
    # left a quarter of them idle at C = 192).
    default=per_width({"BLOCK_M": 16, "BLOCK_C": 64, "num_warps": 4, "num_stages": 2}),
    **_SHAPES,
    tune_call=_tune_forward,
    pointer_types={"nbr_ptr": "*i32", "slot_ptr": "*u8"},
    aot_constants=lambda dtype, config: {"K": 32, "RELATIVE": True, "SAVE_SLOT": True},
)

#: The backward: the forward's launch shapes, its own kernel, tiles and recipe.
MAX_AGGREGATE_BACKWARD = Tunable(
    name="max_aggregate_backward",
    kernels=[_max_aggregate_backward_kernel, _valid_rows],
    tune_call=_tune_backward,
    pointer_types={"nbr_ptr": "*i32", "slot_ptr": "*u8", "grad_x_ptr": "*fp32"},
    aot_constants=lambda dtype, config: {"K": 32},
    space=per_width(_BACKWARD_SPACE),
    default=per_width({"BLOCK_M": 16, "BLOCK_C": 128, "num_warps": 4, "num_stages": 1}),
    **_SHAPES,
)


def launch_max_aggregate(
    x: torch.Tensor,
    nbr: torch.Tensor,
    relative: bool = True,
    with_argslot: bool = True,
    *,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward: x ``(M, C)``, nbr ``(M, K)`` int32 -> out ``(M, C)``, argslot ``(M, C)``
    uint8 (empty ``(0,)`` unless ``with_argslot``)."""
    M, C = x.shape
    K = nbr.shape[1]
    if x.stride(1) != 1:
        x = x.contiguous()
    nbr = nbr.contiguous()
    if out is None:
        out = (
            torch.empty(M, C, dtype=x.dtype, device=x.device),
            torch.empty((M, C) if with_argslot else (0,), dtype=torch.uint8, device=x.device),
        )
    result, argslot = out
    if M == 0 or C == 0:
        return result, argslot
    config = config or MAX_AGGREGATE.config(x.device, MAX_AGGREGATE.bucket(x.dtype, M=M, C=C, K=K))
    meta, opts = split_launch_options(config)
    grid = (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(C, meta["BLOCK_C"]))
    _max_aggregate_kernel[grid](
        x,
        nbr,
        result,
        argslot if with_argslot else result,
        M,
        C,
        x.stride(0),
        K=K,
        RELATIVE=relative,
        SAVE_SLOT=with_argslot,
        **meta,
        **opts,
    )
    return result, argslot


def launch_max_aggregate_backward(
    grad: torch.Tensor,
    nbr: torch.Tensor,
    argslot: torch.Tensor,
    relative: bool = True,
    *,
    config: dict | None = None,
) -> torch.Tensor:
    """Launch the backward: ``(M, C)`` gradient w.r.t. x, accumulated in float32."""
    M, C = grad.shape
    K = nbr.shape[1]
    grad = grad.contiguous()
    # d(max_k x[nbr] - x)/dx: the -grad of the centre row is the start value, so the kernel
    # only adds the neighbour terms (one atomic per element instead of two, no zero fill).
    if relative:
        grad_x = -grad.to(torch.float32)
    else:
        grad_x = torch.zeros(M, C, dtype=torch.float32, device=grad.device)
    if M and C:
        config = config or MAX_AGGREGATE_BACKWARD.config(
            grad.device, MAX_AGGREGATE_BACKWARD.bucket(grad.dtype, M=M, C=C, K=K)
        )
        meta, opts = split_launch_options(config)
        grid = (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(C, meta["BLOCK_C"]))
        _max_aggregate_backward_kernel[grid](
            grad,
            nbr.contiguous(),
            argslot,
            grad_x,
            M,
            C,
            K=K,
            **meta,
            **opts,
        )
    return grad_x if grad.dtype == torch.float32 else grad_x.to(grad.dtype)
