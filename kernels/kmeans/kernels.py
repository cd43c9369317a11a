"""Batched k-means, the Triton kernels: Lloyd iterations that read the nodes once each.

Every Lloyd iteration is one pass over an image's nodes: a row block is labelled with its
nearest centroid (squared distance via ``tl.dot``, argmin) and, in the same pass, its one-hot
``tl.dot`` adds the block's nodes into the next means. Three paths give the same results:

- one program per image (:func:`_kmeans_kernel`) runs the whole loop in one launch, each image
  stopping on its own, reading its nodes from memory (L2) every pass;
- the resident path (:func:`_kmeans_resident_kernel`, images of up to 256 x 192 in fp16/bf16 on
  sm_90) is the same loop with the image loaded once: its tiles are loop-invariant operands of
  both products, kept in shared memory, and centroids and labels stay in registers;
- the split path runs several programs per image (a row block each) with one launch per
  iteration (:func:`_kmeans_step`): each program reduces the previous step's block sums into
  the centroids itself, labels its rows and writes its block's sums; convergence is decided per
  image on the device, and :func:`_kmeans_finish` writes the final centroids. No program waits
  on another: programs only read what an earlier launch wrote.

Labels lie in ``[0, kappa)`` for every input: a NaN distance counts as +inf, so a node of a
non-finite image goes to cluster 0 and its NaN spreads into that image's centroids (and no other
image's), as in any PyTorch op. Labels, centroids and the iteration count are the contract of
:func:`kernels.kmeans.reference.kmeans`.

Distances skip ``|x|^2`` (the same for every centroid of a node): ``d = |z|^2 - 2 x.z``. float32
features use IEEE float32 products; fp16/bf16 features multiply the centroids rounded to their
dtype on the tensor cores (float32 accumulation), so labels can differ from the float64 reference
for nodes almost equidistant from two centroids. Sums are accumulated in a fixed order (no
atomics): results are bit-reproducible run to run.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _centroid_slice(
    z_img,
    partials_img,
    counts,
    num_blocks,
    c0,
    C,
    FROM_PARTIALS: tl.constexpr,
    KAPPA: tl.constexpr,
    KAPPA_PAD: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Channels ``[c0, c0 + BLOCK_C)`` of an image's centroids, float32 ``(KAPPA_PAD, BLOCK_C)``
    (rows past KAPPA zero): read from ``z_img`` (``(KAPPA_PAD, C)``), or (``FROM_PARTIALS``) the
    means of the row blocks' sums (``partials_img``: ``(num_blocks, KAPPA, C)``, summed in block
    order) over ``counts`` with an empty cluster keeping its ``z_img`` row."""
    ks = tl.arange(0, KAPPA_PAD)
    chans = c0 + tl.arange(0, BLOCK_C)
    col_mask = (chans < C)[None, :]
    z = tl.load(z_img + ks[:, None] * C + chans[None, :], mask=col_mask, other=0.0)
    if FROM_PARTIALS:
        mask = (ks < KAPPA)[:, None] & col_mask
        sums = tl.zeros([KAPPA_PAD, BLOCK_C], dtype=tl.float32)
        for blk in range(num_blocks):
            offsets = (blk * KAPPA + ks[:, None]) * C + chans[None, :]
            sums += tl.load(partials_img + offsets, mask=mask, other=0.0)
        z = tl.where(counts[:, None] > 0, sums / tl.maximum(counts, 1.0)[:, None], z)
    return z


@triton.jit
def _blocks_changed(changed_img, num_blocks):
    """How many labels an image's row blocks changed: the sum of ``changed_img[:num_blocks]``."""
    blocks = tl.arange(0, 64)
    total = tl.zeros([], dtype=tl.int32)
    for b0 in range(0, num_blocks, 64):
        mask = b0 + blocks < num_blocks
        total += tl.sum(tl.load(changed_img + b0 + blocks, mask=mask, other=0))
    return total


@triton.jit
def _blocks_counts(counts_img, num_blocks, KAPPA_PAD: tl.constexpr):
    """An image's cluster sizes: the sum of its row blocks' ``(num_blocks, KAPPA_PAD)`` counts,
    in block order."""
    ks = tl.arange(0, KAPPA_PAD)
    counts = tl.zeros([KAPPA_PAD], dtype=tl.float32)
    for blk in range(num_blocks):
        counts += tl.load(counts_img + blk * KAPPA_PAD + ks)
    return counts


@triton.jit
def _nearest_cluster(d, ks, KAPPA: tl.constexpr, AXIS: tl.constexpr):
    """The nearest cluster of every node: ``d`` holds squared distances up to a per-node
    constant, clusters along ``AXIS`` (2-D), ``ks`` the cluster indices ``(KAPPA_PAD,)``.
    Padded clusters (>= KAPPA) and NaN distances (a non-finite node or centroid) count as +inf,
    explicitly: the GPU's min ignores NaN while the interpreter's propagates it. A node with no
    finite distance ties every cluster at +inf and goes to cluster 0; ties go to the lowest
    cluster. Labels stay in [0, KAPPA)."""
    d = tl.where(tl.expand_dims(ks < KAPPA, 1 - AXIS) & (d == d), d, float("inf"))
    nearest = tl.min(d, axis=AXIS)
    cluster = tl.expand_dims(ks, 1 - AXIS)
    return tl.min(tl.where(d == tl.expand_dims(nearest, AXIS), cluster, KAPPA - 1), axis=AXIS)


@triton.jit
def _label_block(
    x_img,
    z_img,
    rows,
    row_mask,
    C,
    stride_xn,
    partials_img,
    counts,
    num_blocks,
    z_out_img,
    write_z,
    FROM_PARTIALS: tl.constexpr,
    KAPPA: tl.constexpr,
    KAPPA_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """The nearest centroid of the nodes ``rows`` of one image: ``(BLOCK_N,)`` labels.

    ``d = |z|^2 - 2 x.z`` over ``BLOCK_C`` channel slices of the centroids
    (:func:`_centroid_slice`; with ``write_z`` each slice is also stored to ``z_out_img``),
    ``|z|^2`` summed from the same slices; the choice (NaN, ties) is :func:`_nearest_cluster`'s.
    """
    ks = tl.arange(0, KAPPA_PAD)
    chans = tl.arange(0, BLOCK_C)
    dot = tl.zeros([KAPPA_PAD, BLOCK_N], dtype=tl.float32)  # (cluster, node): M = KAPPA_PAD
    z_norm = tl.zeros([KAPPA_PAD], dtype=tl.float32)
    x_offsets = rows[:, None].to(tl.int64) * stride_xn + chans[None, :]
    for c0 in range(0, C, BLOCK_C):
        col_mask = (c0 + chans < C)[None, :]
        xt = tl.load(x_img + c0 + x_offsets, mask=row_mask[:, None] & col_mask, other=0.0)
        zt = _centroid_slice(
            z_img, partials_img, counts, num_blocks, c0, C, FROM_PARTIALS, KAPPA, KAPPA_PAD,
            BLOCK_C,
        )  # fmt: skip
        if write_z:
            tl.store(z_out_img + ks[:, None] * C + c0 + chans[None, :], zt, mask=col_mask)
        z_norm += tl.sum(zt * zt, axis=1)
        if UPCAST:
            xt = xt.to(tl.float32)
        dot += tl.dot(zt.to(xt.dtype), tl.trans(xt), input_precision=DOT_PRECISION)
    return _nearest_cluster(z_norm[:, None] - 2.0 * dot, ks, KAPPA, 0)


@triton.jit
def _accumulate_block(
    x_img,
    sums_img,
    label,
    rows,
    row_mask,
    C,
    stride_xn,
    ACCUMULATE: tl.constexpr,
    KAPPA: tl.constexpr,
    KAPPA_PAD: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """The nodes ``rows`` summed per cluster as a one-hot ``tl.dot`` into ``sums_img`` (float32,
    ``KAPPA`` rows of C, this program's alone): added to what it holds (``ACCUMULATE``) or
    stored; returns the block's cluster sizes ``(KAPPA_PAD,)``. The x slices are the ones
    :func:`_label_block` just read: L1/L2 hits, not a second pass over memory."""
    ks = tl.arange(0, KAPPA_PAD)
    chans = tl.arange(0, BLOCK_C)
    onehot = (label[None, :] == ks[:, None]) & row_mask[None, :]  # (KAPPA_PAD, BLOCK_N)
    x_offsets = rows[:, None].to(tl.int64) * stride_xn + chans[None, :]
    s_offsets = ks[:, None] * C + chans[None, :]
    for c0 in range(0, C, BLOCK_C):
        col_mask = (c0 + chans < C)[None, :]
        s_mask = (ks < KAPPA)[:, None] & col_mask
        xt = tl.load(x_img + c0 + x_offsets, mask=row_mask[:, None] & col_mask, other=0.0)
        if UPCAST:
            xt = xt.to(tl.float32)
        if ACCUMULATE:
            sums = tl.load(sums_img + c0 + s_offsets, mask=s_mask, other=0.0)
            sums = tl.dot(onehot.to(xt.dtype), xt, acc=sums, input_precision=DOT_PRECISION)
        else:
            sums = tl.dot(onehot.to(xt.dtype), xt, input_precision=DOT_PRECISION)
        tl.store(sums_img + c0 + s_offsets, sums, mask=s_mask)
    return tl.sum(onehot.to(tl.float32), axis=1)


@triton.jit
def _lloyd_pass(
    x_img,
    z_img,
    sums_img,
    old_labels,
    new_labels,
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
    """One pass over an image's nodes: label them by ``z_img`` into ``new_labels`` and add them
    into ``sums_img`` (zero on entry). Returns the cluster sizes and how many labels differ from
    ``old_labels`` (another buffer: no thread overwrites a label another has yet to read)."""
    counts = tl.zeros([KAPPA_PAD], dtype=tl.float32)
    changed = tl.zeros([], dtype=tl.int32)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        label = _label_block(
            x_img, z_img, rows, row_mask, C, stride_xn, z_img, counts, 0, z_img, False,
            False, KAPPA, KAPPA_PAD, BLOCK_N, BLOCK_C, DOT_PRECISION, UPCAST,
        )  # fmt: skip
        if not FIRST:
            old = tl.load(old_labels + rows, mask=row_mask, other=0)
            changed += tl.sum(((label != old) & row_mask).to(tl.int32), axis=0)
        tl.store(new_labels + rows, label.to(tl.int32), mask=row_mask)
        counts += _accumulate_block(
            x_img, sums_img, label, rows, row_mask, C, stride_xn,
            True, KAPPA_PAD, KAPPA_PAD, BLOCK_C, DOT_PRECISION, UPCAST,
        )  # fmt: skip
        # The next block reads these sums back in the load's thread layout, not the dot's that
        # stored them: every thread's stores must land first. (Without this the order held only
        # through barriers Triton happened to insert for unrelated layout conversions.)
        tl.debug_barrier()
    if FIRST:
        changed = N
    return counts, changed


@triton.jit
def _new_means(z_img, sums_img, counts, C, KAPPA_PAD: tl.constexpr, BLOCK_C: tl.constexpr):
    """Centroids = sums / counts (an empty cluster keeps its centroid); the sums are zeroed for
    the next pass. (The formula of :func:`_centroid_slice`, written out: reading the centroid
    slice through it costs a spill on sm_80 under Triton 3.6.)"""
    ks = tl.arange(0, KAPPA_PAD)
    chans = tl.arange(0, BLOCK_C)
    offsets = ks[:, None] * C + chans[None, :]
    for c0 in range(0, C, BLOCK_C):
        col_mask = (c0 + chans < C)[None, :]
        sums = tl.load(sums_img + c0 + offsets, mask=col_mask, other=0.0)
        z = tl.load(z_img + c0 + offsets, mask=col_mask, other=0.0)
        z = tl.where(counts[:, None] > 0, sums / tl.maximum(counts, 1.0)[:, None], z)
        tl.store(z_img + c0 + offsets, z, mask=col_mask)
        tl.store(sums_img + c0 + offsets, tl.zeros_like(sums), mask=col_mask)


@triton.jit
def _seed_centroids(x_img, z_img, sums_img, N, C, stride_xn, KAPPA: tl.constexpr,
                    KAPPA_PAD: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    """Initial centroid k = node ``((2k + 1) N) // (2 KAPPA)`` (rows past KAPPA zero); sums
    zeroed."""
    ks = tl.arange(0, KAPPA_PAD)
    chans = tl.arange(0, BLOCK_C)
    seeds = ((2 * ks + 1) * N) // (2 * KAPPA)
    offsets = ks[:, None] * C + chans[None, :]
    for c0 in range(0, C, BLOCK_C):
        col_mask = (c0 + chans < C)[None, :]
        z = tl.load(
            x_img + c0 + seeds[:, None].to(tl.int64) * stride_xn + chans[None, :],
            mask=(ks < KAPPA)[:, None] & col_mask,
            other=0.0,
        ).to(tl.float32)
        tl.store(z_img + c0 + offsets, z, mask=col_mask)
        tl.store(sums_img + c0 + offsets, tl.zeros_like(z), mask=col_mask)


@triton.jit
def _kmeans_kernel(
    x_ptr,  # *T (B, N, C): features, strides (stride_xb, stride_xn, 1)
    labels_ptr,  # *i32 (B, N): out, cluster of every node
    scratch_labels_ptr,  # *i32 (B, N): scratch, the other label buffer
    centroids_ptr,  # *f32 (B, KAPPA_PAD, C): out (rows >= KAPPA unused)
    sums_ptr,  # *f32 (B, KAPPA_PAD, C): scratch, the next means' sums
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
    """One image's whole Lloyd loop, one pass over its nodes per iteration.

    Pass t labels the nodes with centroids z_t and accumulates the means z_{t+1} of those labels
    in the same pass. If no label changed, z_t were already the means of the final labels; at the
    cap, z_{t+1} are. Labels alternate between two buffers, so a pass compares against the last
    one without a barrier inside it; when the loop stops on convergence both hold the same labels,
    at the cap an odd last pass leaves them in the scratch buffer and they are copied back."""
    b = tl.program_id(0).to(tl.int64)
    x_img = x_ptr + b * stride_xb
    labels_a = labels_ptr + b * N
    labels_b = scratch_labels_ptr + b * N
    z_img = centroids_ptr + b * KAPPA_PAD * C
    sums_img = sums_ptr + b * KAPPA_PAD * C

    _seed_centroids(x_img, z_img, sums_img, N, C, stride_xn, KAPPA, KAPPA_PAD, BLOCK_C)
    tl.debug_barrier()  # centroids are read by other threads of this program below
    counts, changed = _lloyd_pass(
        x_img, z_img, sums_img, labels_b, labels_a, N, C, stride_xn, True,
        KAPPA, KAPPA_PAD, BLOCK_N, BLOCK_C, DOT_PRECISION, UPCAST,
    )  # fmt: skip
    iterations = tl.zeros([], dtype=tl.int32)
    while (changed > 0) & (iterations < max_iters):
        tl.debug_barrier()  # the pass's sums and labels are complete
        _new_means(z_img, sums_img, counts, C, KAPPA_PAD, BLOCK_C)
        tl.debug_barrier()  # the new centroids are visible to every thread
        if iterations % 2 == 0:
            counts, changed = _lloyd_pass(
                x_img, z_img, sums_img, labels_a, labels_b, N, C, stride_xn, False,
                KAPPA, KAPPA_PAD, BLOCK_N, BLOCK_C, DOT_PRECISION, UPCAST,
            )  # fmt: skip
        else:
            counts, changed = _lloyd_pass(
                x_img, z_img, sums_img, labels_b, labels_a, N, C, stride_xn, False,
                KAPPA, KAPPA_PAD, BLOCK_N, BLOCK_C, DOT_PRECISION, UPCAST,
            )  # fmt: skip
        iterations += 1
    if changed > 0:  # hit the cap: the centroids become the means of the last labels
        tl.debug_barrier()
        _new_means(z_img, sums_img, counts, C, KAPPA_PAD, BLOCK_C)
        if iterations % 2 == 1:  # the last pass wrote the scratch buffer
            for n0 in range(0, N, BLOCK_N):
                rows = n0 + tl.arange(0, BLOCK_N)
                last = tl.load(labels_b + rows, mask=rows < N, other=0)
                tl.store(labels_a + rows, last, mask=rows < N)
    tl.store(iterations_ptr + b, iterations)


# --------------------------------------------------------------------------------------------
# The split path: several programs per image, one launch per Lloyd iteration
# --------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["step"])  # one compile for every Lloyd step
def _kmeans_step(
    x_ptr,  # *T (B, N, C): features, strides (stride_xb, stride_xn, 1)
    labels_ptr,  # *i32 (B, N): in/out, cluster of every node
    centroids_ptr,  # *f32 (2, B, KAPPA_PAD, C): the centroids of even / odd steps
    partial_sums_ptr,  # *f32 (2, B, num_blocks, KAPPA, C): each block's sums, by step parity
    partial_counts_ptr,  # *f32 (2, B, num_blocks, KAPPA_PAD): each block's cluster sizes
    changed_ptr,  # *i32 (2, B, num_blocks): labels each block changed, by step parity
    iterations_ptr,  # *i32 (B,): out, centroid updates run
    N,
    C,
    stride_xb,
    stride_xn,
    num_blocks,
    step,  # 0: the first assignment from the seeds; t >= 1: Lloyd iteration t
    FIRST: tl.constexpr,
    KAPPA: tl.constexpr,
    KAPPA_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One row block of one image, one Lloyd step: the centroids z_t from the blocks' sums of
    step t - 1 (each program reduces them itself, in block order: no program waits for another
    to do it), then the block's labels and its share of the next sums, in one pass over its
    rows. Everything a program reads was written by an earlier launch: step t writes the buffers
    of parity t % 2 and reads those of parity (t - 1) % 2. An image whose last step changed no
    label has converged: its programs only record that (zero changed) and exit."""
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    B = tl.num_programs(0)
    cur = step % 2
    prev = 1 - cur
    ks = tl.arange(0, KAPPA_PAD)
    changed_prev = changed_ptr + (prev * B + b) * num_blocks
    changed_cur = changed_ptr + (cur * B + b) * num_blocks
    converged = False
    if not FIRST:
        converged = _blocks_changed(changed_prev, num_blocks) == 0
    if converged:
        tl.store(changed_cur + blk, 0)
    else:
        x_img = x_ptr + b * stride_xb
        z_size = KAPPA_PAD * C
        z_prev = centroids_ptr + (prev * B + b) * z_size
        z_cur = centroids_ptr + (cur * B + b) * z_size
        block_sums = num_blocks * KAPPA * C
        partials_prev = partial_sums_ptr + (prev * B + b) * block_sums
        counts = tl.zeros([KAPPA_PAD], dtype=tl.float32)
        if not FIRST:
            counts_prev = partial_counts_ptr + (prev * B + b) * num_blocks * KAPPA_PAD
            counts = _blocks_counts(counts_prev, num_blocks, KAPPA_PAD)
            if blk == 0:
                tl.store(iterations_ptr + b, step)
        rows = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        labels_img = labels_ptr + b * N
        # Step 0 reads the seeded centroids the launcher wrote into parity 0 (z_cur); later
        # steps reduce the previous step's sums, falling back to z_prev for empty clusters.
        label = _label_block(
            x_img, z_cur if FIRST else z_prev, rows, row_mask, C, stride_xn, partials_prev,
            counts, num_blocks, z_cur, (blk == 0) & (not FIRST), not FIRST, KAPPA, KAPPA_PAD,
            BLOCK_N, BLOCK_C, DOT_PRECISION, UPCAST,
        )  # fmt: skip
        if FIRST:
            changed = tl.sum(row_mask.to(tl.int32), axis=0)
        else:
            old = tl.load(labels_img + rows, mask=row_mask, other=0)
            changed = tl.sum(((label != old) & row_mask).to(tl.int32), axis=0)
            tl.debug_barrier()  # every thread has read its old labels before any is replaced
        tl.store(labels_img + rows, label.to(tl.int32), mask=row_mask)
        sums_block = partial_sums_ptr + ((cur * B + b) * num_blocks + blk) * KAPPA * C
        block_counts = _accumulate_block(
            x_img, sums_block, label, rows, row_mask, C, stride_xn,
            False, KAPPA, KAPPA_PAD, BLOCK_C, DOT_PRECISION, UPCAST,
        )  # fmt: skip
        counts_cur = partial_counts_ptr + (cur * B + b) * num_blocks * KAPPA_PAD
        tl.store(counts_cur + blk * KAPPA_PAD + ks, block_counts)
        tl.store(changed_cur + blk, changed)


@triton.jit
def _kmeans_finish(
    centroids_ptr,  # *f32 (2, B, KAPPA_PAD, C): the steps' centroids
    partial_sums_ptr,  # *f32 (2, B, num_blocks, KAPPA, C)
    partial_counts_ptr,  # *f32 (2, B, num_blocks, KAPPA_PAD)
    changed_ptr,  # *i32 (2, B, num_blocks)
    iterations_ptr,  # *i32 (B,): centroid updates each image ran
    out_ptr,  # *f32 (B, KAPPA_PAD, C): out, the means of the final partition
    C,
    num_blocks,
    last,  # the parity of the last step
    KAPPA: tl.constexpr,
    KAPPA_PAD: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One channel slice of one image's final centroids: an image that converged has them in
    the buffer of its last update (parity ``iterations % 2``); one that hit the cap gets the
    means of its last labels, from the last step's sums."""
    b = tl.program_id(0).to(tl.int64)
    c0 = tl.program_id(1) * BLOCK_C
    B = tl.num_programs(0)
    ks = tl.arange(0, KAPPA_PAD)
    changed = _blocks_changed(changed_ptr + (last * B + b) * num_blocks, num_blocks)
    updated = tl.load(iterations_ptr + b) % 2  # parity of the last centroids computed
    z_img = centroids_ptr + (updated * B + b) * KAPPA_PAD * C
    counts = tl.zeros([KAPPA_PAD], dtype=tl.float32)
    if changed > 0:
        counts_last = partial_counts_ptr + (last * B + b) * num_blocks * KAPPA_PAD
        counts = _blocks_counts(counts_last, num_blocks, KAPPA_PAD)
    partials = partial_sums_ptr + (last * B + b) * num_blocks * KAPPA * C
    z = _centroid_slice(
        z_img, partials, counts, num_blocks, c0, C, True, KAPPA, KAPPA_PAD, BLOCK_C
    )  # with no change the counts are zero: every row keeps z_img's
    chans = c0 + tl.arange(0, BLOCK_C)
    tl.store(
        out_ptr + (b * KAPPA_PAD + ks[:, None]) * C + chans[None, :], z, mask=(chans < C)[None, :]
    )


# --------------------------------------------------------------------------------------------
# The resident path: one program per image whose nodes stay in shared memory for the whole loop
# --------------------------------------------------------------------------------------------
@triton.jit
def _resident_pass(
    xs,
    zs,
    N,
    KAPPA: tl.constexpr,
    KAPPA_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_CHUNKS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One Lloyd pass over an image held on chip: ``xs`` is its ``(BLOCK_N, BLOCK_C)`` channel
    slices, ``zs`` the centroids' float32 ``(KAPPA_PAD, BLOCK_C)`` slices. Returns the labels
    ``(BLOCK_N,)`` and the means of those labels (an empty cluster keeps its ``zs`` row).

    Distances are :func:`_label_block`'s, chosen by :func:`_nearest_cluster`; the one-hot sums
    are :func:`_accumulate_block`'s product, here ``x^T @ onehot`` over all rows at once. The same
    tiles feed both products: on sm_90 they are the operands of both ``wgmma`` from one shared
    memory copy (the second reads it transposed), loaded once before the loop."""
    ks = tl.arange(0, KAPPA_PAD)
    rows = tl.arange(0, BLOCK_N)
    row_mask = rows < N
    dot = tl.zeros([BLOCK_N, KAPPA_PAD], dtype=tl.float32)  # (node, cluster): M = BLOCK_N
    z_norm = tl.zeros([KAPPA_PAD], dtype=tl.float32)
    for i in tl.static_range(NUM_CHUNKS):
        z_norm += tl.sum(zs[i] * zs[i], axis=1)
        dot = tl.dot(xs[i], tl.trans(zs[i].to(xs[i].dtype)), acc=dot, input_precision=DOT_PRECISION)
    label = _nearest_cluster(z_norm[None, :] - 2.0 * dot, ks, KAPPA, 1)
    onehot = (label[:, None] == ks[None, :]) & row_mask[:, None]  # (node, cluster)
    counts = tl.sum(onehot.to(tl.float32), axis=0)
    onehot = onehot.to(xs[0].dtype)
    means = ()
    for i in tl.static_range(NUM_CHUNKS):
        sums = tl.trans(tl.dot(tl.trans(xs[i]), onehot, input_precision=DOT_PRECISION))
        means = means + (
            tl.where(counts[:, None] > 0, sums / tl.maximum(counts, 1.0)[:, None], zs[i]),
        )
    return label, means


@triton.jit
def _kmeans_resident_kernel(
    x_ptr,  # *T (B, N, C): features, strides (stride_xb, stride_xn, 1)
    labels_ptr,  # *i32 (B, N): out, cluster of every node
    centroids_ptr,  # *f32 (B, KAPPA_PAD, C): out (rows >= KAPPA unused)
    iterations_ptr,  # *i32 (B,): out, centroid updates run
    N,
    C,
    stride_xb,
    stride_xn,
    max_iters,
    KAPPA: tl.constexpr,
    KAPPA_PAD: tl.constexpr,  # power of two >= max(KAPPA, 16)
    BLOCK_N: tl.constexpr,  # power of two >= N, at least 16 (the sums' tl.dot K on a GPU)
    BLOCK_C: tl.constexpr,
    NUM_CHUNKS: tl.constexpr,  # cdiv(C, BLOCK_C)
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One image's whole Lloyd loop with its nodes read from memory once.

    The image's ``NUM_CHUNKS`` channel slices are loaded before the loop and are loop-invariant
    operands of every pass's products, so the compiler keeps them on chip (shared memory on
    sm_90); the centroids and labels are loop-carried registers. Pass t labels the nodes with
    z_t and returns z_{t+1}, the means of those labels: when no label changed they equal z_t
    bit for bit (the same labels summed in the same order), so z_{t+1} is the answer both on
    convergence and at the cap, and nothing but the outputs is ever stored."""
    b = tl.program_id(0).to(tl.int64)
    x_img = x_ptr + b * stride_xb
    rows = tl.arange(0, BLOCK_N)
    ks = tl.arange(0, KAPPA_PAD)
    chans = tl.arange(0, BLOCK_C)
    seeds = ((2 * ks + 1) * N) // (2 * KAPPA)
    row_offsets = rows[:, None].to(tl.int64) * stride_xn
    seed_offsets = seeds[:, None].to(tl.int64) * stride_xn
    xs = ()
    zs = ()
    for i in tl.static_range(NUM_CHUNKS):
        col_mask = (i * BLOCK_C + chans < C)[None, :]
        offsets = i * BLOCK_C + chans[None, :]
        xt = tl.load(
            x_img + row_offsets + offsets, mask=(rows < N)[:, None] & col_mask,
            other=0.0,
        )  # fmt: skip
        z = tl.load(
            x_img + seed_offsets + offsets, mask=(ks < KAPPA)[:, None] & col_mask,
            other=0.0,
        )  # fmt: skip
        if UPCAST:
            xt = xt.to(tl.float32)
        xs = xs + (xt,)
        zs = zs + (z.to(tl.float32),)
    labels, zs = _resident_pass(xs, zs, N, KAPPA, KAPPA_PAD, BLOCK_N, NUM_CHUNKS, DOT_PRECISION)
    changed = N
    iterations = 0
    while (changed > 0) & (iterations < max_iters):
        new_labels, zs = _resident_pass(
            xs, zs, N, KAPPA, KAPPA_PAD, BLOCK_N, NUM_CHUNKS, DOT_PRECISION
        )
        changed = tl.sum(((new_labels != labels) & (rows < N)).to(tl.int32), axis=0)
        labels = new_labels
        iterations += 1
    tl.store(labels_ptr + b * N + rows, labels, mask=rows < N)
    z_img = centroids_ptr + b * KAPPA_PAD * C
    for i in tl.static_range(NUM_CHUNKS):
        c = i * BLOCK_C + chans
        tl.store(z_img + ks[:, None] * C + c[None, :], zs[i], mask=(c < C)[None, :])
    tl.store(iterations_ptr + b, iterations)
