"""Batched k-means: the whole Lloyd loop of one image in one program.

One program per image runs: initial centroids (nodes spread over the raster order), then
``assign`` (squared distance to every centroid via ``tl.dot``, argmin, count of changed labels)
and ``update`` (segmented mean as a one-hot ``tl.dot``; an empty cluster keeps its centroid)
until no label changes or ``max_iters`` updates ran. Each image stops on its own, the loop
needs no host sync, and the whole k-means is one launch. Labels lie in ``[0, kappa)`` for every
input: a NaN distance counts as +inf, so a node of a non-finite image goes to cluster 0 and its
NaN spreads into that image's centroids (and no other image's), as in any PyTorch op. Labels,
centroids and the iteration count are the contract of :func:`kernels.reference.kmeans`.

Distances skip ``|x|^2`` (the same for every centroid of a node): ``d = |z|^2 - 2 x.z``. float32
features use IEEE float32 products; fp16/bf16 features multiply the centroids rounded to their
dtype on the tensor cores (float32 accumulation), so labels can differ from the float64 reference
for nodes almost equidistant from two centroids.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INDEX_DTYPE, dot_precision, next_power_of_2
from ._tuning import TRITON_TYPES, Tunable, batch_bucket, configs, split_launch_options
from .reference import kmeans_init_index


@triton.jit
def _nearest_centroid(
    x_img,
    z_img,
    z_norm,
    rows,
    row_mask,
    C,
    stride_xn,
    KAPPA: tl.constexpr,
    KAPPA_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """The nearest centroid of the nodes ``rows`` of one image: ``(BLOCK_N,)`` labels.

    ``d = |z|^2 - 2 x.z`` over ``tl.dot`` slices of the channels (``|x|^2`` is the same for
    every centroid). A NaN distance (non-finite node or centroid) counts as +inf, explicitly:
    the GPU's min ignores NaN while the interpreter's propagates it. A node with no finite
    distance then ties every cluster at +inf and goes to cluster 0: labels stay in [0, KAPPA).
    """
    ks = tl.arange(0, KAPPA_PAD)
    k_mask = ks < KAPPA
    dot = tl.zeros([BLOCK_N, KAPPA_PAD], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_mask = cols[None, :] < C
        xt = tl.load(
            x_img + rows[:, None].to(tl.int64) * stride_xn + cols[None, :],
            mask=row_mask[:, None] & col_mask,
            other=0.0,
        )
        zt = tl.load(
            z_img + ks[:, None] * C + cols[None, :], mask=k_mask[:, None] & col_mask, other=0.0
        )
        if UPCAST:
            xt = xt.to(tl.float32)
        dot += tl.dot(xt, tl.trans(zt.to(xt.dtype)), input_precision=DOT_PRECISION)
    d = z_norm[None, :] - 2.0 * dot
    d = tl.where(k_mask[None, :] & (d == d), d, float("inf"))
    nearest = tl.min(d, axis=1)
    is_nearest = (d == nearest[:, None]) & k_mask[None, :]
    return tl.min(tl.where(is_nearest, ks[None, :], KAPPA - 1), axis=1)


@triton.jit
def _assign(
    x_img,
    labels_img,
    z_img,
    norms_img,
    N,
    C,
    stride_xn,
    FIRST: tl.constexpr,
    KAPPA: tl.constexpr,
    KAPPA_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Label every node of one image with its nearest centroid; return how many labels changed."""
    z_norm = tl.load(norms_img + tl.arange(0, KAPPA_PAD))
    changed = tl.zeros([], dtype=tl.int32)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        label = _nearest_centroid(
            x_img, z_img, z_norm, rows, row_mask, C, stride_xn,
            KAPPA, KAPPA_PAD, BLOCK_N, BLOCK_C, DOT_PRECISION, UPCAST,
        )  # fmt: skip
        if not FIRST:
            old = tl.load(labels_img + rows, mask=row_mask, other=0)
            changed += tl.sum(((label != old) & row_mask).to(tl.int32), axis=0)
            # The store below may use another thread layout than the load: let every thread
            # read its old labels before any is overwritten.
            tl.debug_barrier()
        tl.store(labels_img + rows, label.to(tl.int32), mask=row_mask)
    if FIRST:
        changed = N
    return changed


@triton.jit
def _update(
    x_img,
    labels_img,
    z_img,
    norms_img,
    N,
    C,
    stride_xn,
    KAPPA: tl.constexpr,
    KAPPA_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Centroid of every cluster = mean of its nodes (kept when empty); refresh |z|^2."""
    ks = tl.arange(0, KAPPA_PAD)
    k_mask = ks < KAPPA
    z_norm = tl.zeros([KAPPA_PAD], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_mask = cols[None, :] < C
        sums = tl.zeros([KAPPA_PAD, BLOCK_C], dtype=tl.float32)
        counts = tl.zeros([KAPPA_PAD], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N)
            row_mask = rows < N
            label = tl.load(labels_img + rows, mask=row_mask, other=-1)
            onehot = label[:, None] == ks[None, :]  # (BLOCK_N, KAPPA_PAD)
            xt = tl.load(
                x_img + rows[:, None].to(tl.int64) * stride_xn + cols[None, :],
                mask=row_mask[:, None] & col_mask,
                other=0.0,
            )
            if UPCAST:
                xt = xt.to(tl.float32)
            sums += tl.dot(tl.trans(onehot.to(xt.dtype)), xt, input_precision=DOT_PRECISION)
            counts += tl.sum(onehot.to(tl.float32), axis=0)
        z_ptrs = z_img + ks[:, None] * C + cols[None, :]
        z_mask = k_mask[:, None] & col_mask
        previous = tl.load(z_ptrs, mask=z_mask, other=0.0)
        z = tl.where(counts[:, None] > 0, sums / tl.maximum(counts, 1.0)[:, None], previous)
        tl.debug_barrier()  # every thread has read its previous centroids before any store
        tl.store(z_ptrs, z, mask=z_mask)
        z_norm += tl.sum(tl.where(z_mask, z * z, 0.0), axis=1)
    tl.store(norms_img + ks, z_norm)


@triton.jit
def _kmeans_kernel(
    x_ptr,  # *T (B, N, C): features, strides (stride_xb, stride_xn, 1)
    labels_ptr,  # *i32 (B, N): out, cluster of every node
    centroids_ptr,  # *f32 (B, KAPPA_PAD, C): out (rows >= KAPPA unused)
    norms_ptr,  # *f32 (B, KAPPA_PAD): scratch, |z|^2 of every centroid
    iterations_ptr,  # *i32 (B,): out, centroid updates run
    N,
    C,
    stride_xb,
    stride_xn,
    max_iters,
    KAPPA: tl.constexpr,
    KAPPA_PAD: tl.constexpr,  # power of two >= max(KAPPA, 16) (tl.dot's minimum)
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    x_img = x_ptr + b * stride_xb
    labels_img = labels_ptr + b * N
    z_img = centroids_ptr + b * KAPPA_PAD * C
    norms_img = norms_ptr + b * KAPPA_PAD

    # Initial centroid k: node ((2k + 1) N) // (2 KAPPA).
    ks = tl.arange(0, KAPPA_PAD)
    k_mask = ks < KAPPA
    seeds = ((2 * ks + 1) * N) // (2 * KAPPA)
    z_norm = tl.zeros([KAPPA_PAD], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = k_mask[:, None] & (cols[None, :] < C)
        z = tl.load(
            x_img + seeds[:, None].to(tl.int64) * stride_xn + cols[None, :], mask=mask, other=0.0
        ).to(tl.float32)
        tl.store(z_img + ks[:, None] * C + cols[None, :], z, mask=mask)
        z_norm += tl.sum(z * z, axis=1)
    tl.store(norms_img + ks, z_norm)
    tl.debug_barrier()  # centroids are read by other threads of this program below

    changed = _assign(
        x_img, labels_img, z_img, norms_img, N, C, stride_xn, True,
        KAPPA, KAPPA_PAD, BLOCK_N, BLOCK_C, DOT_PRECISION, UPCAST,
    )  # fmt: skip
    iterations = tl.zeros([], dtype=tl.int32)
    while (changed > 0) & (iterations < max_iters):
        tl.debug_barrier()
        _update(
            x_img, labels_img, z_img, norms_img, N, C, stride_xn,
            KAPPA, KAPPA_PAD, BLOCK_N, BLOCK_C, DOT_PRECISION, UPCAST,
        )  # fmt: skip
        tl.debug_barrier()
        changed = _assign(
            x_img, labels_img, z_img, norms_img, N, C, stride_xn, False,
            KAPPA, KAPPA_PAD, BLOCK_N, BLOCK_C, DOT_PRECISION, UPCAST,
        )  # fmt: skip
        iterations += 1
    if changed > 0:  # hit the cap: centroids belong to the previous labels, re-average
        tl.debug_barrier()
        _update(
            x_img, labels_img, z_img, norms_img, N, C, stride_xn,
            KAPPA, KAPPA_PAD, BLOCK_N, BLOCK_C, DOT_PRECISION, UPCAST,
        )  # fmt: skip
    tl.store(iterations_ptr + b, iterations)


# --------------------------------------------------------------------------------------------
# The split path: several programs per image, one launch pair per Lloyd iteration
# --------------------------------------------------------------------------------------------
@triton.jit
def _kmeans_assign_block(
    x_ptr,  # *T (B, N, C): features, strides (stride_xb, stride_xn, 1)
    labels_ptr,  # *i32 (B, N): in/out, cluster of every node
    centroids_ptr,  # *f32 (B, KAPPA_PAD, C): the current centroids (rows >= KAPPA zero)
    norms_ptr,  # *f32 (B, KAPPA_PAD): |z|^2 of every centroid
    active_ptr,  # *i32 (B,): 0 once an image has converged (its programs exit at once)
    partial_sums_ptr,  # *f32 (B, num_blocks, KAPPA_PAD, C): out, this block's one-hot^T x
    partial_counts_ptr,  # *f32 (B, num_blocks, KAPPA_PAD): out, this block's cluster sizes
    changed_ptr,  # *i32 (B, num_blocks): out, labels this block changed
    N,
    C,
    stride_xb,
    stride_xn,
    num_blocks,
    FIRST: tl.constexpr,  # the first assignment: every label counts as changed
    KAPPA: tl.constexpr,
    KAPPA_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One row block of one image: label its nodes (nearest centroid, NaN as +inf) and, in the
    same pass over its rows, the block's share of the next means (sums and sizes per cluster).
    No program reads another's output: the update kernel combines the blocks after the launch."""
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    if tl.load(active_ptr + b) != 0:
        x_img = x_ptr + b * stride_xb
        labels_img = labels_ptr + b * N
        z_img = centroids_ptr + b * KAPPA_PAD * C
        ks = tl.arange(0, KAPPA_PAD)
        rows = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        z_norm = tl.load(norms_ptr + b * KAPPA_PAD + ks)
        label = _nearest_centroid(
            x_img, z_img, z_norm, rows, row_mask, C, stride_xn,
            KAPPA, KAPPA_PAD, BLOCK_N, BLOCK_C, DOT_PRECISION, UPCAST,
        )  # fmt: skip
        if FIRST:
            changed = tl.sum(row_mask.to(tl.int32), axis=0)
        else:
            old = tl.load(labels_img + rows, mask=row_mask, other=0)
            changed = tl.sum(((label != old) & row_mask).to(tl.int32), axis=0)
            tl.debug_barrier()  # every thread has read its old labels before any is replaced
        tl.store(labels_img + rows, label.to(tl.int32), mask=row_mask)

        onehot = (label[:, None] == ks[None, :]) & row_mask[:, None]  # (BLOCK_N, KAPPA_PAD)
        block = b * num_blocks + blk
        tl.store(partial_counts_ptr + block * KAPPA_PAD + ks, tl.sum(onehot.to(tl.float32), axis=0))
        tl.store(changed_ptr + block, changed)
        sums_block = partial_sums_ptr + block * KAPPA_PAD * C
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            col_mask = cols[None, :] < C
            # The tile this program read above: from L1/L2, not a second pass over memory.
            xt = tl.load(
                x_img + rows[:, None].to(tl.int64) * stride_xn + cols[None, :],
                mask=row_mask[:, None] & col_mask,
                other=0.0,
            )
            if UPCAST:
                xt = xt.to(tl.float32)
            sums = tl.dot(tl.trans(onehot.to(xt.dtype)), xt, input_precision=DOT_PRECISION)
            tl.store(sums_block + ks[:, None] * C + cols[None, :], sums, mask=col_mask)


@triton.jit
def _kmeans_update_image(
    centroids_ptr,  # *f32 (B, KAPPA_PAD, C): in/out
    norms_ptr,  # *f32 (B, KAPPA_PAD): out, |z|^2
    active_ptr,  # *i32 (B,): in/out
    iterations_ptr,  # *i32 (B,): in/out, centroid updates run
    partial_sums_ptr,  # *f32 (B, num_blocks, KAPPA_PAD, C)
    partial_counts_ptr,  # *f32 (B, num_blocks, KAPPA_PAD)
    changed_ptr,  # *i32 (B, num_blocks)
    C,
    num_blocks,
    COUNT: tl.constexpr,  # an iteration's update (counted), or the final re-average (not)
    KAPPA_PAD: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One image: if its last assignment changed nothing it has converged (inactive from now
    on, centroids already the means of its labels); else the centroids become the means of the
    blocks' sums, in a fixed block order (deterministic), an empty cluster keeping its own."""
    b = tl.program_id(0).to(tl.int64)
    if tl.load(active_ptr + b) != 0:
        changed = tl.zeros([], dtype=tl.int32)
        for blk in range(num_blocks):
            changed += tl.load(changed_ptr + b * num_blocks + blk)
        if changed == 0:
            tl.store(active_ptr + b, 0)
        else:
            ks = tl.arange(0, KAPPA_PAD)
            counts = tl.zeros([KAPPA_PAD], dtype=tl.float32)
            for blk in range(num_blocks):
                counts += tl.load(partial_counts_ptr + (b * num_blocks + blk) * KAPPA_PAD + ks)
            z_img = centroids_ptr + b * KAPPA_PAD * C
            z_norm = tl.zeros([KAPPA_PAD], dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                cols = c0 + tl.arange(0, BLOCK_C)
                col_mask = cols[None, :] < C
                offsets = ks[:, None] * C + cols[None, :]
                sums = tl.zeros([KAPPA_PAD, BLOCK_C], dtype=tl.float32)
                for blk in range(num_blocks):
                    block_sums = partial_sums_ptr + (b * num_blocks + blk) * KAPPA_PAD * C
                    sums += tl.load(block_sums + offsets, mask=col_mask, other=0.0)
                previous = tl.load(z_img + offsets, mask=col_mask, other=0.0)
                z = tl.where(counts[:, None] > 0, sums / tl.maximum(counts, 1.0)[:, None], previous)
                tl.debug_barrier()  # every thread has read its previous centroids before any store
                tl.store(z_img + offsets, z, mask=col_mask)
                z_norm += tl.sum(tl.where(col_mask, z * z, 0.0), axis=1)
            tl.store(norms_ptr + b * KAPPA_PAD + ks, z_norm)
            if COUNT:
                tl.store(iterations_ptr + b, tl.load(iterations_ptr + b) + 1)


# Every config compiles without register spills for sm_80 and sm_90 under both the oldest
# supported Triton (3.6) and torch 2.14's (3.8) (tests/kernels/test_aot_compile.py, run by CI in
# both; 3.9 agreed when last checked); float32 (FMA products) keeps thinner tiles.
_SPACE_16BIT = configs(
    ("BLOCK_N", "BLOCK_C", "num_warps", "num_stages"),
    [
        (32, 64, 8, 2),
        (64, 32, 8, 2),
        (64, 64, 8, 2),
        (64, 128, 8, 2),
        (128, 32, 8, 2),
        (128, 128, 8, 2),
        (64, 32, 4, 1),
        (64, 64, 4, 1),
        (128, 32, 4, 1),
        (128, 128, 4, 1),
    ],
)
_SPACE_32BIT = configs(
    ("BLOCK_N", "BLOCK_C", "num_warps", "num_stages"),
    [
        (64, 16, 8, 2),
        (128, 64, 8, 1),
    ],
)

_INTERPRET_SPACE = [
    {"BLOCK_N": 16, "BLOCK_C": 16, "num_warps": 4, "num_stages": 1},
    {"BLOCK_N": 32, "BLOCK_C": 16, "num_warps": 4, "num_stages": 1},
]


def _bucket(B: int, N: int, C: int, kappa: int) -> str:
    return f"N{N}/C{C}/k{kappa}/B{batch_bucket(B)}"


KMEANS = Tunable(
    name="kmeans",
    kernels=[_kmeans_kernel, _assign, _update, _nearest_centroid],
    space={"e2": _SPACE_16BIT, "e4": _SPACE_32BIT},
    default={
        "e2": {"BLOCK_N": 64, "BLOCK_C": 64, "num_warps": 8, "num_stages": 2},
        "e4": {"BLOCK_N": 64, "BLOCK_C": 16, "num_warps": 8, "num_stages": 2},
    },
    interpret_space=_INTERPRET_SPACE,
    bucket_fn=_bucket,
    signature_fn=lambda dtype, config: (
        {
            "x_ptr": f"*{TRITON_TYPES[dtype]}",
            "labels_ptr": "*i32",
            "centroids_ptr": "*fp32",
            "norms_ptr": "*fp32",
            "iterations_ptr": "*i32",
            "N": "i32",
            "C": "i32",
            "stride_xb": "i32",
            "stride_xn": "i32",
            "max_iters": "i32",
            "KAPPA": "constexpr",
            "KAPPA_PAD": "constexpr",
            "BLOCK_N": "constexpr",
            "BLOCK_C": "constexpr",
            "DOT_PRECISION": "constexpr",
            "UPCAST": "constexpr",
        },
        {
            "KAPPA": 16,
            "KAPPA_PAD": 16,
            "BLOCK_N": config["BLOCK_N"],
            "BLOCK_C": config["BLOCK_C"],
            "DOT_PRECISION": dot_precision(dtype)[0],
            "UPCAST": False,
        },
    ),
)


def _split_signature(dtype: torch.dtype, config: dict) -> tuple[dict, dict]:
    return (
        {
            "x_ptr": f"*{TRITON_TYPES[dtype]}",
            "labels_ptr": "*i32",
            "centroids_ptr": "*fp32",
            "norms_ptr": "*fp32",
            "active_ptr": "*i32",
            "partial_sums_ptr": "*fp32",
            "partial_counts_ptr": "*fp32",
            "changed_ptr": "*i32",
            "N": "i32",
            "C": "i32",
            "stride_xb": "i32",
            "stride_xn": "i32",
            "num_blocks": "i32",
            "FIRST": "constexpr",
            "KAPPA": "constexpr",
            "KAPPA_PAD": "constexpr",
            "BLOCK_N": "constexpr",
            "BLOCK_C": "constexpr",
            "DOT_PRECISION": "constexpr",
            "UPCAST": "constexpr",
        },
        {
            "FIRST": False,
            "KAPPA": 16,
            "KAPPA_PAD": 16,
            "BLOCK_N": config["BLOCK_N"],
            "BLOCK_C": config["BLOCK_C"],
            "DOT_PRECISION": dot_precision(dtype)[0],
            "UPCAST": False,
        },
    )


KMEANS_SPLIT = Tunable(
    name="kmeans_split",
    kernels=[_kmeans_assign_block, _kmeans_update_image, _nearest_centroid],
    space={
        "e2": configs(
            ("BLOCK_N", "BLOCK_C", "num_warps", "num_stages"),
            [(32, 64, 4, 1), (64, 64, 4, 1), (64, 128, 4, 1), (128, 64, 8, 1), (64, 64, 8, 2)],
        ),
        "e4": configs(
            ("BLOCK_N", "BLOCK_C", "num_warps", "num_stages"),
            # (64, 64, 4, 1) and (128, 32, 8, 1) spill under Triton 3.6
            [(32, 32, 4, 1), (64, 32, 4, 1), (64, 32, 8, 2)],
        ),
    },
    default={
        "e2": {"BLOCK_N": 64, "BLOCK_C": 64, "num_warps": 4, "num_stages": 1},
        "e4": {"BLOCK_N": 64, "BLOCK_C": 32, "num_warps": 4, "num_stages": 1},
    },
    interpret_space=_INTERPRET_SPACE,
    bucket_fn=_bucket,
    signature_fn=_split_signature,
)

#: The split path pays one launch pair per Lloyd iteration (2 * max_iters + 2 launches) to use
#: several SMs per image; one program per image runs the whole loop in one launch but on one SM.
#: Estimated (no GPU timing yet): the split wins when few images carry much work each.
SPLIT_MAX_IMAGES = 16
SPLIT_MIN_WORK = 256 * 256  # N * C per image


def use_split(B: int, N: int, C: int) -> bool:
    """Whether :func:`kmeans` runs the split path by default for this shape."""
    return B <= SPLIT_MAX_IMAGES and N * C >= SPLIT_MIN_WORK


def kmeans(
    x: torch.Tensor,
    num_clusters: int,
    max_iters: int = 20,
    *,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    config: dict | None = None,
    split: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x ``(B, N, C)`` -> labels ``(B, N)`` int32, centroids ``(B, kappa, C)`` in ``x.dtype``,
    iterations ``(B,)`` int32: :func:`_kmeans_kernel` (one program per image, one launch) or,
    with ``split`` (default: :func:`use_split`), the split path (several programs per image).

    ``out`` may pass preallocated ``(labels, iterations)``; ``config`` overrides the tuned one.
    """
    B, N, C = x.shape
    if x.stride(2) != 1:
        x = x.contiguous()
    kappa_pad = max(16, next_power_of_2(num_clusters))
    if out is None:
        out = (
            torch.empty(B, N, dtype=INDEX_DTYPE, device=x.device),
            torch.empty(B, dtype=INDEX_DTYPE, device=x.device),
        )
    labels, iterations = out
    centroids = torch.empty(B, kappa_pad, C, dtype=torch.float32, device=x.device)
    if B == 0 or N == 0:
        return labels, centroids[:, :num_clusters].to(x.dtype).contiguous(), iterations
    norms = torch.empty(B, kappa_pad, dtype=torch.float32, device=x.device)
    if use_split(B, N, C) if split is None else split:
        _kmeans_split(x, num_clusters, max_iters, labels, iterations, centroids, norms, config)
        return labels, centroids[:, :num_clusters].to(x.dtype).contiguous(), iterations
    config = config or KMEANS.config(
        x.device, KMEANS.bucket(x.dtype, B=B, N=N, C=C, kappa=num_clusters)
    )
    meta, opts = split_launch_options(config)
    precision, upcast = dot_precision(x.dtype)
    _kmeans_kernel[(B,)](
        x,
        labels,
        centroids,
        norms,
        iterations,
        N,
        C,
        x.stride(0),
        x.stride(1),
        max_iters,
        KAPPA=num_clusters,
        KAPPA_PAD=kappa_pad,
        DOT_PRECISION=precision,
        UPCAST=upcast,
        **meta,
        **opts,
    )
    return labels, centroids[:, :num_clusters].to(x.dtype).contiguous(), iterations


def _kmeans_split(
    x: torch.Tensor,
    num_clusters: int,
    max_iters: int,
    labels: torch.Tensor,
    iterations: torch.Tensor,
    centroids: torch.Tensor,
    norms: torch.Tensor,
    config: dict | None,
) -> None:
    """The split path: ``max_iters`` launch pairs (update, then assign + accumulate), decided per
    image on the device (a converged image's programs exit at once), no host sync."""
    B, N, C = x.shape
    kappa_pad = centroids.shape[1]
    config = config or KMEANS_SPLIT.config(
        x.device, KMEANS_SPLIT.bucket(x.dtype, B=B, N=N, C=C, kappa=num_clusters)
    )
    meta, opts = split_launch_options(config)
    num_blocks = triton.cdiv(N, meta["BLOCK_N"])
    seeds = kmeans_init_index(N, num_clusters).to(x.device)
    centroids.zero_()
    centroids[:, :num_clusters] = x[:, seeds].float()
    torch.sum(centroids * centroids, dim=-1, out=norms)
    active = torch.ones(B, dtype=torch.int32, device=x.device)
    iterations.zero_()
    partial_sums = torch.empty(B, num_blocks, kappa_pad, C, dtype=torch.float32, device=x.device)
    partial_counts = torch.empty(B, num_blocks, kappa_pad, dtype=torch.float32, device=x.device)
    changed = torch.empty(B, num_blocks, dtype=torch.int32, device=x.device)
    precision, upcast = dot_precision(x.dtype)
    partials = (partial_sums, partial_counts, changed)

    def assign(first: bool) -> None:
        _kmeans_assign_block[(B, num_blocks)](
            x, labels, centroids, norms, active, *partials,
            N, C, x.stride(0), x.stride(1), num_blocks,
            FIRST=first, KAPPA=num_clusters, KAPPA_PAD=kappa_pad,
            DOT_PRECISION=precision, UPCAST=upcast, **meta, **opts,
        )  # fmt: skip

    def update(count: bool) -> None:
        _kmeans_update_image[(B,)](
            centroids, norms, active, iterations, *partials, C, num_blocks,
            COUNT=count, KAPPA_PAD=kappa_pad, BLOCK_C=meta["BLOCK_C"], **opts,
        )  # fmt: skip

    assign(True)
    for _ in range(max_iters):
        update(True)
        assign(False)
    update(False)  # images that hit the cap: the means of their last labels
