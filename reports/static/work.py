"""Work models: per kernel launch, the bytes, FLOPs, trips of the hot loop per program and the
programs that do work (:data:`WORK_MODELS`, by kernel name), under the report's assumptions
(Lloyd iterations per image, equal partitions)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["WORK_MODELS", "Work", "partition_sizes"]


@dataclass
class Work:
    bytes: float
    flops: float  # of which tensor-core FLOPs
    tc_flops: float
    hot_trips: float  # hot-loop iterations per active program
    active_programs: int
    # trips per active program of the loops named in LOOP_ROLES (replaces the hot-loop count)
    loop_trips: dict[str, float] = field(default_factory=dict)
    # bytes that read again what the launch already read (``bytes`` excludes them), and the
    # distinct bytes read: re-reads are L2 hits when those fit in the L2, else DRAM traffic
    reread_bytes: float = 0.0
    distinct_bytes: float = 0.0


def partition_sizes(n: int, kappa: int) -> list[int]:
    """Equal partitions (the stated assumption): N / kappa nodes, the remainder spread."""
    return [n // kappa + (1 if i < n % kappa else 0) for i in range(kappa)]


def _kmeans_kernel(launch, shape, iters) -> Work:
    x = launch.args["x_ptr"]
    B, N, C = x.shape
    bn, bc = launch.constexprs["BLOCK_N"], launch.constexprs["BLOCK_C"]
    kpad = launch.constexprs["KAPPA_PAD"]
    passes = iters + 1  # the first assignment, then one pass per iteration (assign + accumulate)
    # Each pass reads x once (its accumulate step re-reads the slices the label step just read:
    # L1 hits) and the labels twice; the sums (kpad x C floats) stay in L1/L2. Passes after the
    # first read x again: L2 hits if x fits there (CViG-Ti: 19 MB at batch 256).
    x_bytes = B * N * C * x.dtype.itemsize
    return Work(
        bytes=x_bytes + passes * 2 * B * N * 4,
        flops=passes * B * 4 * N * kpad * C,
        tc_flops=passes * B * 4 * N * kpad * C,
        hot_trips=passes * math.ceil(N / bn) * 2 * math.ceil(C / bc),
        active_programs=B,
        reread_bytes=(passes - 1) * x_bytes,
        distinct_bytes=x_bytes,
    )


def _kmeans_resident_kernel(launch, shape, iters) -> Work:
    x = launch.args["x_ptr"]
    B, N, C = x.shape
    kpad = launch.constexprs["KAPPA_PAD"]
    # x is read once (its tiles stay in shared memory); labels, centroids and the iteration
    # count are written once. The first pass runs before the loop, the loop once per iteration.
    return Work(
        bytes=B * N * C * x.dtype.itemsize + B * N * 4 + B * kpad * C * 4 + B * 4,
        flops=(iters + 1) * B * 4 * N * kpad * C,
        tc_flops=(iters + 1) * B * 4 * N * kpad * C,
        hot_trips=iters,
        active_programs=B,
    )


def _kmeans_step(launch, shape, iters) -> Work:
    x = launch.args["x_ptr"]
    B, N, C = x.shape
    bc = launch.constexprs["BLOCK_C"]
    kpad, kappa = launch.constexprs["KAPPA_PAD"], launch.constexprs["KAPPA"]
    blocks = launch.grid[1]
    sums = B * blocks * kappa * C * 4  # one step's partial sums
    first = launch.constexprs["FIRST"]  # the first step reads the seeds, no sums
    # Every launch of the loop is counted once per forward by the caller; programs of an image
    # that has converged exit at once: a launch does work with probability iters / max_iters.
    # Each program reads x's rows of its block, and every block's sums of the last step (its
    # image's: L2 re-reads after the first), and writes its own sums, counts and labels.
    chunks = math.ceil(C / bc)
    return Work(
        bytes=B * N * C * x.dtype.itemsize + 2 * B * N * 4 + (1 if first else 2) * sums,
        flops=B * 4 * N * kpad * C,
        tc_flops=B * 4 * N * kpad * C,
        hot_trips=0,  # the named loops below
        active_programs=B * blocks,
        loop_trips={"reduce": 0 if first else chunks * blocks, "slice": 2 * chunks},
        reread_bytes=0 if first else (blocks - 1) * sums,
        distinct_bytes=sums,
    )


def _kmeans_finish(launch, shape, iters) -> Work:
    sums = launch.args["partial_sums_ptr"]
    _, B, blocks, kappa, C = sums.shape
    # Each (image, channel slice) program reads its slice of every block's last sums.
    return Work(
        bytes=sums.nbytes / 2 + launch.args["out_ptr"].nbytes,
        flops=0,
        tc_flops=0,
        hot_trips=blocks,
        active_programs=launch.programs,
    )


def _partition_kernel(launch, shape, iters) -> Work:
    labels = launch.args["labels_ptr"]
    B, N = labels.shape
    bn = launch.constexprs["BLOCK_N"]
    return Work(
        bytes=B * N * 4 * 5,
        flops=0,
        tc_flops=0,
        hot_trips=2 * math.ceil(N / bn),
        active_programs=B,
    )


def _permute_rows_kernel(launch, shape, iters) -> Work:
    x = launch.args["x_ptr"]
    M, C = x.shape
    return Work(
        bytes=2 * M * C * x.dtype.itemsize + M * 4,
        flops=0,
        tc_flops=0,
        hot_trips=1,
        active_programs=launch.programs,
    )


def _partition_knn_kernel(launch, shape, iters) -> Work:
    x = launch.args["x_ptr"]
    M, C = x.shape
    c = launch.constexprs
    bm, bn, bc, k = c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_C"], c["K"]
    B, N, kappa = shape["B"], shape["N"], shape["kappa"]
    sizes = partition_sizes(N, kappa) * B
    blocks = sum(math.ceil(s / bm) for s in sizes)
    tile_pairs = sum(math.ceil(s / bm) * math.ceil(s / bn) for s in sizes)
    chunks = math.ceil(C / bc)
    # Per block: the rows' norms; then per column tile the candidates' norms and the products;
    # then K selection passes over the one tile, or K merge passes per tile (larger partitions).
    trips = {"norms": 0.0, "dot": 0.0, "selection": 0.0, "merge": 0.0}
    for s in sizes:
        n_blocks, tiles = math.ceil(s / bm), math.ceil(s / bn)
        trips["norms"] += n_blocks * chunks * (1 + tiles)
        trips["dot"] += n_blocks * tiles * chunks
        if tiles == 1:
            trips["selection"] += n_blocks * min(k, s)
        else:
            trips["merge"] += n_blocks * tiles * k
    programs = launch.programs
    return Work(
        bytes=sum(math.ceil(s / bm) * (bm + s) for s in sizes) * C * x.dtype.itemsize + M * k * 4,
        flops=tile_pairs * 2 * bm * bn * C,
        tc_flops=tile_pairs * 2 * bm * bn * C,
        hot_trips=0,
        active_programs=min(programs, blocks),
        loop_trips={role: t / max(1, min(programs, blocks)) for role, t in trips.items()},
    )


def _max_aggregate_kernel(launch, shape, iters) -> Work:
    x = launch.args["x_ptr"]
    M, C = x.shape
    k = launch.constexprs["K"]
    # The K gathered rows lie in the same image's partition, read by neighbouring programs:
    # L2 hits, not DRAM traffic (x of a layer is at most ~20 MB at the models' batch 256).
    return Work(
        bytes=2 * M * C * x.dtype.itemsize + M * k * 4,
        flops=2 * M * k * C,
        tc_flops=0,
        hot_trips=k,
        active_programs=launch.programs,
    )


def _segment_norm_gelu_kernel(launch, shape, iters) -> Work:
    acc = launch.args["acc_ptr"]
    table = launch.args["table_ptr"]
    M, C = acc.shape
    # One read of acc, one write of the result; the partition rows and the vectors are L2 hits.
    return Work(
        bytes=2 * M * C * acc.dtype.itemsize + M * 4 + table.nbytes,
        flops=8 * M * C,
        tc_flops=0,
        hot_trips=1,
        active_programs=launch.programs,
    )


def _center_tokens_kernel(launch, shape, iters) -> Work:
    out = launch.args["out_ptr"]
    # The image's channels read twice (the second time from L2), written once.
    return Work(
        bytes=2 * out.nbytes,
        flops=2 * out.numel,
        tc_flops=0,
        hot_trips=2 * math.ceil(out.shape[1] / launch.constexprs["BLOCK_N"]),
        active_programs=launch.programs,
        reread_bytes=out.nbytes,
        distinct_bytes=out.nbytes,
    )


def _gatv2_attention_kernel(launch, shape, iters) -> Work:
    source = launch.args["source_ptr"]
    B, kappa, C = source.shape
    pad = launch.constexprs["KAPPA_PAD"]
    # Each image's two projections read, its output written; the (kappa, kappa, C) pairs are
    # formed in registers slice by slice.
    return Work(
        bytes=3 * source.nbytes,
        flops=B * (4 * pad * pad * C + 2 * pad * pad * C),
        tc_flops=0,
        hot_trips=2 * math.ceil(C / launch.constexprs["BLOCK_C"]),
        active_programs=B,
    )


WORK_MODELS = {
    "_kmeans_kernel": _kmeans_kernel,
    "_kmeans_resident_kernel": _kmeans_resident_kernel,
    "_kmeans_step": _kmeans_step,
    "_kmeans_finish": _kmeans_finish,
    "_partition_kernel": _partition_kernel,
    "_permute_rows_kernel": _permute_rows_kernel,
    "_partition_knn_kernel": _partition_knn_kernel,
    "_max_aggregate_kernel": _max_aggregate_kernel,
    "_segment_norm_gelu_kernel": _segment_norm_gelu_kernel,
    "_center_tokens_kernel": _center_tokens_kernel,
    "_gatv2_attention_kernel": _gatv2_attention_kernel,
}
