"""Partition order (labels -> counts, offsets, stable positions) and row permutation.

``partition`` turns k-means labels into the paper's "unrolled and arranged" layout: nodes sorted
by (image, cluster), stable inside a cluster. ``permute_rows`` moves feature rows between image
order and partition order (``out[i] = x[index[i]]``); with a permutation its own inverse gives the
backward, so one kernel serves both directions and both passes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import INDEX_DTYPE, next_power_of_2
from ..tuning import Tunable, TuneCase, per_width, rows_bucket, split_launch_options


# --------------------------------------------------------------------------------------------
# partition
# --------------------------------------------------------------------------------------------
@triton.jit
def _clamped_labels(labels_img, n, N, KAPPA: tl.constexpr):
    """Labels of nodes ``n`` clamped to ``[0, KAPPA)`` (-1 past N): whatever the labels hold,
    every node is counted once and placed once, so ``perm`` is always a permutation."""
    lab = tl.load(labels_img + n, mask=n < N, other=0)
    return tl.where(n < N, tl.minimum(tl.maximum(lab, 0), KAPPA - 1), -1)


@triton.jit
def _partition_kernel(
    labels_ptr,  # *i32 (B, N): cluster of every node, row stride stride_lb
    perm_ptr,  # *i32 (B*N,): out, image-order index of the node at each partition position
    inverse_ptr,  # *i32 (B*N,): out, partition position of each image-order node
    offsets_ptr,  # *i32 (B*KAPPA + 1,): out, partition boundaries
    segment_ptr,  # *i32 (B*N,): out, partition id b*KAPPA + label of each image-order node
    N,  # nodes per image
    num_images,  # B
    stride_lb,  # row stride of labels
    KAPPA: tl.constexpr,
    KAPPA_PAD: tl.constexpr,  # next power of two >= KAPPA
    BLOCK_N: tl.constexpr,
):
    """One program per image: count the clusters, then place every node at its cluster's start
    plus its rank among the earlier nodes of the same cluster (a stable counting sort)."""
    b = tl.program_id(0).to(tl.int64)
    ks = tl.arange(0, KAPPA_PAD)
    counts = tl.zeros([KAPPA_PAD], dtype=tl.int32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        lab = _clamped_labels(labels_ptr + b * stride_lb, n, N, KAPPA)
        counts += tl.sum((lab[:, None] == ks[None, :]).to(tl.int32), axis=0)
    base = b * N
    starts = tl.cumsum(counts, axis=0) - counts  # exclusive prefix sum
    tl.store(offsets_ptr + b * KAPPA + ks, (base + starts).to(tl.int32), mask=ks < KAPPA)
    if b == 0:
        tl.store(offsets_ptr + num_images * KAPPA, (num_images * N).to(tl.int32))

    running = starts
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask = n < N
        lab = _clamped_labels(labels_ptr + b * stride_lb, n, N, KAPPA)
        onehot = (lab[:, None] == ks[None, :]).to(tl.int32)
        rank = tl.cumsum(onehot, axis=0) - 1  # earlier nodes of the same cluster in this block
        position = base + tl.sum((rank + running[None, :]) * onehot, axis=1)
        tl.store(perm_ptr + position, (base + n).to(tl.int32), mask=mask)
        tl.store(inverse_ptr + base + n, position.to(tl.int32), mask=mask)
        tl.store(segment_ptr + base + n, (b * KAPPA + lab).to(tl.int32), mask=mask)
        running += tl.sum(onehot, axis=0)


def _partition_launch(B: int, N: int, C: int, kappa: int, K: int, dtype: torch.dtype):
    """A DEGC layer orders its B images' N labels (int32, whatever the features' dtype)."""
    return torch.int32, {"N": N, "kappa": kappa}


def _tune_partition(shape: dict, dtype: torch.dtype, device: torch.device):
    kappa = shape["kappa"]
    images = 64 if device.type == "cuda" else 4  # one program per image
    labels = torch.randint(0, kappa, (images, shape["N"]), dtype=torch.int32, device=device)
    return TuneCase(lambda config: launch_partition(labels, kappa, config=config))


PARTITION = Tunable(
    name="partition",
    kernels=[_partition_kernel, _clamped_labels],
    space=per_width(
        [
            {"BLOCK_N": bn, "num_warps": w, "num_stages": 1}
            for bn in (128, 256, 512)
            for w in (2, 4, 8)
            if bn <= 128 * w  # (BLOCK_N, KAPPA_PAD) one-hot tiles: 512 rows need 4+ warps
        ]
    ),
    default=per_width({"BLOCK_N": 256, "num_warps": 4, "num_stages": 1}),
    interpret_space=[
        {"BLOCK_N": 32, "num_warps": 4, "num_stages": 1},
        {"BLOCK_N": 64, "num_warps": 4, "num_stages": 1},
    ],
    bucket_fn=lambda N, kappa: f"N{N}/k{kappa}",
    layer_launch=_partition_launch,
    tune_call=_tune_partition,
    pointer_types={
        name: "*i32"
        for name in ("labels_ptr", "perm_ptr", "inverse_ptr", "offsets_ptr", "segment_ptr")
    },
    aot_constants=lambda dtype, config: {"KAPPA": 16, "KAPPA_PAD": 16},
)


def launch_partition(
    labels: torch.Tensor,
    num_clusters: int,
    *,
    out: tuple[torch.Tensor, ...] | None = None,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch :func:`_partition_kernel`: labels ``(B, N)`` int32 -> perm, inverse, offsets, segment.

    Labels outside ``[0, num_clusters)`` are clamped into it (the CPU op rejects them first).
    ``out`` may pass
    preallocated outputs (tests poison them); ``config`` overrides the tuned config.
    """
    B, N = labels.shape
    if labels.stride(1) != 1:
        labels = labels.contiguous()
    M = B * N
    if out is None:
        out = (
            torch.empty(M, dtype=INDEX_DTYPE, device=labels.device),
            torch.empty(M, dtype=INDEX_DTYPE, device=labels.device),
            torch.empty(B * num_clusters + 1, dtype=INDEX_DTYPE, device=labels.device),
            torch.empty(M, dtype=INDEX_DTYPE, device=labels.device),
        )
    perm, inverse, offsets, segment = out
    if B == 0:
        offsets.zero_()
        return perm, inverse, offsets, segment
    config = config or PARTITION.config(
        labels.device, PARTITION.bucket(torch.int32, N=N, kappa=num_clusters)
    )
    meta, opts = split_launch_options(config)
    _partition_kernel[(B,)](
        labels,
        perm,
        inverse,
        offsets,
        segment,
        N,
        B,
        labels.stride(0),
        KAPPA=num_clusters,
        KAPPA_PAD=next_power_of_2(num_clusters),
        **meta,
        **opts,
    )
    return perm, inverse, offsets, segment


# --------------------------------------------------------------------------------------------
# permute_rows
# --------------------------------------------------------------------------------------------
@triton.jit
def _permute_rows_kernel(
    x_ptr,  # *T (M, C) source rows, strides (stride_xm, stride_xc)
    index_ptr,  # *i32 (M,): out[i] = x[index[i]]
    out_ptr,  # *T (M, C) contiguous
    M,
    C,
    stride_xm,
    stride_xc,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """A (BLOCK_M, BLOCK_C) tile of gathered rows per program."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_mask = rows < M
    mask = row_mask[:, None] & (cols[None, :] < C)
    source = tl.load(index_ptr + rows, mask=row_mask, other=0)
    source = tl.minimum(tl.maximum(source, 0), M - 1).to(tl.int64)  # never outside x
    values = tl.load(x_ptr + source[:, None] * stride_xm + cols[None, :] * stride_xc, mask=mask)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], values, mask=mask)


def _tune_permute_rows(shape: dict, dtype: torch.dtype, device: torch.device):
    x = torch.randn(shape["M"], shape["C"], device=device).to(dtype)
    index = torch.randperm(shape["M"], device=device).to(torch.int32)
    return TuneCase(lambda config: launch_permute_rows(x, index, config=config))


PERMUTE_ROWS = Tunable(
    name="permute_rows",
    kernels=[_permute_rows_kernel],
    space=per_width(
        [
            {"BLOCK_M": 16, "BLOCK_C": 64, "num_warps": 4, "num_stages": 1},
            {"BLOCK_M": 16, "BLOCK_C": 128, "num_warps": 4, "num_stages": 1},
            {"BLOCK_M": 16, "BLOCK_C": 256, "num_warps": 4, "num_stages": 1},
            {"BLOCK_M": 16, "BLOCK_C": 256, "num_warps": 8, "num_stages": 1},
            {"BLOCK_M": 32, "BLOCK_C": 64, "num_warps": 4, "num_stages": 1},
            {"BLOCK_M": 32, "BLOCK_C": 128, "num_warps": 4, "num_stages": 1},
            {"BLOCK_M": 32, "BLOCK_C": 128, "num_warps": 8, "num_stages": 1},
            {"BLOCK_M": 64, "BLOCK_C": 64, "num_warps": 4, "num_stages": 1},
            {"BLOCK_M": 64, "BLOCK_C": 64, "num_warps": 8, "num_stages": 1},
            {"BLOCK_M": 64, "BLOCK_C": 256, "num_warps": 4, "num_stages": 1},
        ]
    ),
    default=per_width({"BLOCK_M": 32, "BLOCK_C": 128, "num_warps": 4, "num_stages": 1}),
    interpret_space=[
        {"BLOCK_M": 16, "BLOCK_C": 32, "num_warps": 4, "num_stages": 1},
        {"BLOCK_M": 32, "BLOCK_C": 64, "num_warps": 4, "num_stages": 1},
    ],
    bucket_fn=lambda M, C: f"C{C}/M{rows_bucket(M)}",
    # The model no longer permutes rows (the k-NN gathers through perm): no layer launch.
    layer_launch=lambda B, N, C, kappa, K, dtype: None,
    tune_call=_tune_permute_rows,
    pointer_types={"index_ptr": "*i32"},
    # The model's rows are contiguous: the JIT specialises a stride of 1 to a constant.
    aot_constants=lambda dtype, config: {"stride_xc": 1},
)


def launch_permute_rows(
    x: torch.Tensor,
    index: torch.Tensor,
    inverse: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    config: dict | None = None,
) -> torch.Tensor:
    """Launch :func:`_permute_rows_kernel`: ``out[i] = x[index[i]]``, x ``(M, C)`` any strides.
    ``inverse`` (the op's third argument, what its backward permutes by) is not read."""
    M, C = x.shape
    out = torch.empty(M, C, dtype=x.dtype, device=x.device) if out is None else out
    if M == 0 or C == 0:
        return out
    config = config or PERMUTE_ROWS.config(x.device, PERMUTE_ROWS.bucket(x.dtype, M=M, C=C))
    meta, opts = split_launch_options(config)
    grid = (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(C, meta["BLOCK_C"]))
    _permute_rows_kernel[grid](x, index, out, M, C, x.stride(0), x.stride(1), **meta, **opts)
    return out
