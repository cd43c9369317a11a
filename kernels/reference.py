"""Pure-torch references of every DEGC op: the CPU path of the model and the oracle of the kernels.

The contracts here are the contracts of the Triton kernels (``kernels/*.py``) and of the custom ops
(``kernels/ops.py``). Shapes use B images, N nodes per image, C channels, kappa clusters,
M = B*N rows in partition order, P = B*kappa partitions, K neighbours. Index tensors are int32.

Precision: distances and means are computed in float32 (the CPU path of the model should not
pay for float64), or in float64 for float64 inputs: the tests pass float64 copies to use the
references as oracles. Results are cast back to the input dtype. Ties are broken towards the
lowest index everywhere (argmin over clusters, neighbour order, argmax over neighbour slots), as
the kernels do.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from ._common import INDEX_DTYPE, SINGLE_THREAD_ROWS, one_cpu_thread

__all__ = [
    "kmeans",
    "kmeans_init_index",
    "partition",
    "permute_rows",
    "partition_knn",
    "max_aggregate",
    "max_aggregate_backward",
    "segment_norm_gelu",
    "center_tokens",
    "gatv2_attention",
]


# --------------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------------
def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs (oracle mode), float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def kmeans_init_index(num_nodes: int, num_clusters: int) -> torch.Tensor:
    """Deterministic initial centroids: nodes spread evenly over the raster order.

    Centroid ``k`` starts at node ``((2k + 1) * N) // (2 * kappa)``, the middle of the k-th of
    kappa equal runs of nodes, so the start is reproducible and needs no RNG.
    Returns int64 ``(kappa,)``.
    """
    k = torch.arange(num_clusters, dtype=torch.int64)
    return ((2 * k + 1) * num_nodes) // (2 * num_clusters)


def _assign(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Nearest centroid of every node. x (B, N, C), z (B, kappa, C) -> (B, N) int64.

    |x|^2 is the same for every centroid of a node, so the argmin only needs |z|^2 - 2 x.z;
    the first minimum wins, i.e. ties go to the lowest cluster index. A NaN distance counts as
    +inf (the kernel's rule), so a node with no finite distance goes to cluster 0 and labels are
    valid for every input.
    """
    # (B, kappa, N): the product this way round is the faster one on the CPU.
    dist = torch.baddbmm(torch.linalg.vecdot(z, z).unsqueeze(2), z, x.transpose(1, 2), alpha=-2)
    # ``min(dim).indices``, not ``argmin``: the same first minimum, but ~15x faster on the CPU
    # for a reduction over a short middle dimension.
    return dist.nan_to_num_(nan=float("inf"), posinf=float("inf")).min(dim=1).indices


def _segment_mean(
    x: torch.Tensor, labels: torch.Tensor, previous: torch.Tensor, onehot: torch.Tensor
) -> torch.Tensor:
    """Mean of the nodes of every cluster; an empty cluster keeps its ``previous`` centroid.

    Sums are a one-hot matrix product (one batched GEMM, faster on the CPU than a scatter);
    ``onehot`` is a ``(B, N, kappa)`` buffer of x's dtype, overwritten.
    """
    onehot.zero_().scatter_(2, labels.unsqueeze(-1), 1.0)
    sums = torch.bmm(onehot.transpose(1, 2), x)  # (B, kappa, C)
    counts = onehot.sum(1).unsqueeze(-1)
    return torch.where(counts > 0, sums / counts, previous)


def kmeans(
    x: torch.Tensor, num_clusters: int, max_iters: int = 20
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched Lloyd k-means, one deterministic initialisation per image.

    Args:
        x: ``(B, N, C)`` float node features (the model passes mean-centred features).
        num_clusters: kappa, ``1 <= kappa <= N``.
        max_iters: cap on centroid updates per image (>= 1).

    Returns:
        labels ``(B, N)`` int32 in ``[0, kappa)``; centroids ``(B, kappa, C)`` in ``x.dtype``;
        iterations ``(B,)`` int32, the centroid updates each image ran.

    Per image: ``labels = assign(z0)``; then while labels changed in the last assignment and
    fewer than ``max_iters`` updates ran: ``z = mean(labels)``, ``labels = assign(z)``. The
    returned centroids are always the means of the returned partition (an image that hit the cap
    gets one more mean), and an empty cluster keeps its previous centroid. Each image stops on its
    own, so a batch gives every image the same result as running it alone.

    An image that has converged is not masked out of later iterations: its labels are a fixed
    point, so recomputing its mean and labels gives them again, bit for bit. Only its iteration
    count stops. On the CPU the loop ends when every image has converged, converged images
    leave the working batch in bulk (:func:`_lloyd_cpu`), and it runs on one thread (a loop of
    small products, where waking a thread pool costs more than it saves); elsewhere it runs to
    the cap without asking the device anything.
    """
    with one_cpu_thread(x):
        return _kmeans(x, num_clusters, max_iters)


def _kmeans(
    x: torch.Tensor, num_clusters: int, max_iters: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, N, C = x.shape
    xd = x.detach().to(compute_dtype(x))
    z = xd[:, kmeans_init_index(N, num_clusters).to(x.device)]
    labels = _assign(xd, z)
    if x.device.type == "cpu":
        labels, z, iterations = _lloyd_cpu(xd, labels, z, max_iters)
    else:
        onehot = xd.new_empty(B, N, num_clusters)
        active = torch.ones(B, dtype=torch.bool, device=x.device)
        iterations = torch.zeros(B, dtype=torch.int32, device=x.device)
        for _ in range(max_iters):
            z = _segment_mean(xd, labels, z, onehot)
            new_labels = _assign(xd, z)
            iterations += active
            active &= (new_labels != labels).any(dim=1)
            labels = new_labels
        # Images that hit the cap: their centroids belong to the previous labels; re-average
        # (for the others this recomputes the same means).
        z = _segment_mean(xd, labels, z, onehot)
    return labels.to(INDEX_DTYPE), z.to(x.dtype), iterations


def _lloyd_cpu(
    x: torch.Tensor, labels: torch.Tensor, z: torch.Tensor, max_iters: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Lloyd loop of :func:`kmeans` on the CPU, where asking whether an image has converged
    is free: the loop ends when every image has, and the images still iterating are compacted
    into a smaller batch once half of the working batch has converged (the products shrink with
    it; each compaction copies the nodes: measured at batch 8, waiting for half is ~5% faster
    than compacting when a quarter has converged, and ~35% faster than never compacting).
    Images waiting for the next compaction stay at their fixed point, as in the batched loop.
    """
    B, N, _ = x.shape
    onehot = x.new_empty(B, N, z.shape[1])
    iterations = torch.zeros(B, dtype=torch.int32)  # per working-batch row
    active = torch.ones(B, dtype=torch.bool)  # per working-batch row: labels changed last time
    # Once compacted: the whole batch's labels, centroids and iterations, and the image of
    # every working-batch row.
    done: list[torch.Tensor] | None = None
    live = torch.arange(B)

    def store() -> None:
        for out, value in zip(done, (labels, z, iterations), strict=True):
            out[live] = value

    for _ in range(max_iters):
        z = _segment_mean(x, labels, z, onehot[: x.shape[0]])
        new_labels = _assign(x, z)
        iterations += active
        if torch.equal(new_labels, labels):  # every image has converged (one op, no bookkeeping)
            break
        if x.shape[0] == 1:  # a batch of one image that has not converged: nothing to compact
            labels = new_labels
            continue
        active &= (new_labels != labels).any(dim=1)
        labels = new_labels
        remaining = int(active.sum())
        if 2 * remaining <= x.shape[0]:
            if done is None:
                # The whole batch as it stands; compaction below copies, so these tensors are
                # never written through the working ones again.
                done = [labels, z, iterations]
            else:
                store()
            keep = active.nonzero().flatten()
            live, x, z, labels = live[keep], x[keep], z[keep], labels[keep]
            active, iterations = active[keep], iterations[keep]
    else:
        # Images that hit the cap: their centroids belong to the previous labels; re-average
        # (for converged images still in the working batch this recomputes the same means).
        z = _segment_mean(x, labels, z, onehot[: x.shape[0]])
    if done is None:
        return labels, z, iterations
    store()
    return done[0], done[1], done[2]


# --------------------------------------------------------------------------------------------
# Partition layout and permutation
# --------------------------------------------------------------------------------------------
def partition(
    labels: torch.Tensor, num_clusters: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Partition order of the nodes: sorted by (image, cluster), stable inside a cluster.

    Args:
        labels: ``(B, N)`` integer cluster of every node, in ``[0, kappa)`` (values outside
            are clamped into it, as the kernel does, so the result is always a permutation).

    Returns (all int32):
        perm ``(M,)``: ``perm[p]`` = flat image-order index ``b*N + n`` of the node at partition
        position ``p``, so ``x_ua = x.reshape(M, C)[perm]``.
        inverse ``(M,)``: ``inverse[b*N + n]`` = partition position of node n of image b.
        offsets ``(P + 1,)``: partition ``q = b*kappa + k`` holds positions
        ``[offsets[q], offsets[q+1])``; ``offsets[P] = M``. Empty partitions have equal offsets.
        segment ``(M,)``: partition id ``b*kappa + label`` of every node, in image order
        (``segment[b*N + n]``: what the local update adds each node's centroid term by).
    """
    B, N = labels.shape
    device = labels.device
    lab = labels.to(torch.int64).clamp(0, num_clusters - 1)
    order = torch.sort(lab, dim=1, stable=True).indices
    base = torch.arange(B, device=device, dtype=torch.int64).unsqueeze(1)
    perm = (order + base * N).reshape(-1)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(B * N, device=device, dtype=torch.int64)
    counts = torch.zeros(B, num_clusters, dtype=torch.int64, device=device)
    counts.scatter_add_(1, lab, torch.ones_like(lab))
    offsets = torch.zeros(B * num_clusters + 1, dtype=torch.int64, device=device)
    offsets[1:] = counts.reshape(-1).cumsum(0)
    segment = (lab + base * num_clusters).reshape(-1)
    return (
        perm.to(INDEX_DTYPE),
        inverse.to(INDEX_DTYPE),
        offsets.to(INDEX_DTYPE),
        segment.to(INDEX_DTYPE),
    )


def permute_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[i] = x[index[i]]`` for a 2-D ``x (M, C)`` and a permutation ``index (M,)``."""
    return x[index.long()].contiguous()


# --------------------------------------------------------------------------------------------
# In-partition k-NN
# --------------------------------------------------------------------------------------------
def _nearest_first(
    dist: torch.Tensor, k: int, excluded: torch.Tensor | None = None
) -> torch.Tensor:
    """Column indices of the ``k`` smallest entries of every row, ordered by (distance, index).

    As the kernel does: NaN ranks as +inf (after every finite distance, tied by index) and a
    distance below zero (rounding) counts as 0. float64 (oracle mode): a stable sort. float32:
    ``topk`` over int64 keys that pack the distance's bits (ordered like the value for a
    non-negative float) above the column index, so equal distances are ordered by index
    exactly as the stable sort would, at a fraction of its cost. Entries where ``excluded`` is
    True rank after every other one, +inf and NaN included. ``dist`` is scratch: overwritten.
    """
    inf = float("inf")
    dist = dist.nan_to_num_(nan=inf, posinf=inf)
    if dist.dtype != torch.float32:
        dist = dist.clamp_min_(0.0)
        if excluded is not None:
            dist = dist.masked_fill(excluded, float("nan"))  # a stable sort puts NaN last
        return torch.sort(dist, dim=-1, stable=True).indices[..., :k]
    column = torch.arange(dist.shape[-1], device=dist.device, dtype=torch.int64)
    # Bits of a negative float (-0.0 included) are negative integers: clamped to those of +0.0.
    keys = dist.view(torch.int32).to(torch.int64).clamp_min_(0)
    keys = keys.bitwise_left_shift_(32).bitwise_or_(column)
    if excluded is not None:
        keys.masked_fill_(excluded, torch.iinfo(torch.int64).max)
    return torch.topk(keys, k, dim=-1, largest=False, sorted=True).values & 0xFFFFFFFF


def partition_knn(
    x: torch.Tensor,
    offsets: torch.Tensor,
    k: int,
    max_partition_size: int | None = None,
    *,
    perm: torch.Tensor | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """K nearest nodes of every node inside its own partition (itself included).

    Args:
        x: ``(M, C)`` float features: in partition order, or in any order with ``perm``.
        offsets: ``(P + 1,)`` int partition boundaries (see :func:`partition`).
        k: K >= 1.
        max_partition_size: a bound on every partition's size. Off the CPU it sizes the work
            without asking the device (default: M); on the CPU the true largest size is used.
        perm: ``(M,)`` int, the row of x at every partition position (:func:`partition`'s
            ``perm``: each partition's rows in increasing order). The neighbours of row
            ``perm[i]`` are then written to that row, as rows of x (the model's image order).
        normalize: distances between the rows scaled to unit length (``F.normalize``: divided
            by ``max(|x|, 1e-12)``), i.e. ``2 - 2 cos`` for nonzero rows.

    Returns:
        ``(M, K)`` int32 row indices into ``x``, nearest first by squared Euclidean distance,
        ties to the lower index, NaN distances ranked as +inf (so every index is a member of
        the node's partition, for any input). A node whose partition has ``s < K`` members gets
        those s members in distance order, repeated cyclically: slot ``j`` holds the member of
        rank ``j % s``. (Max aggregation over the list is unchanged by the repeats; sum
        aggregation must weight slot ``j`` by ``j < s``.)

    No step reads a value back to the host off the CPU, so it runs on any device without a sync.
    """
    if normalize:
        x = F.normalize(x.detach().to(compute_dtype(x)), dim=-1, eps=1e-12)
    if perm is None:
        return _partition_knn(x, offsets, k, max_partition_size)
    index = perm.long()
    nbr = _partition_knn(x.index_select(0, index), offsets, k, max_partition_size)
    out = torch.empty_like(nbr)
    out[index] = perm.to(INDEX_DTYPE)[nbr.long()]  # rows and ids back in x's order
    return out


def _partition_knn(
    x: torch.Tensor, offsets: torch.Tensor, k: int, max_partition_size: int | None
) -> torch.Tensor:
    """:func:`partition_knn` of rows in partition order."""
    M, C = x.shape
    P = offsets.shape[0] - 1
    if M == 0 or P == 0:
        return torch.empty(M, k, dtype=INDEX_DTYPE, device=x.device)
    starts = offsets[:-1].to(torch.int64)
    sizes = (offsets[1:] - offsets[:-1]).to(torch.int64)
    xd = x.detach().to(compute_dtype(x))
    # Row M of ``out`` is a sink for the padding slots of short partitions (no masked copy,
    # which would need the count of valid rows on the host).
    out = torch.empty(M + 1, k, dtype=INDEX_DTYPE, device=x.device)
    if x.device.type == "cpu":
        with one_cpu_thread(x, M <= SINGLE_THREAD_ROWS):
            _knn_cpu(xd, offsets, starts, sizes, k, out)
    else:
        S = max(1, min(M, max_partition_size or M))
        _knn_padded(xd, starts, sizes, S, k, out, M)
    return out[:M]


def _knn_cpu(
    xd: torch.Tensor,
    offsets: torch.Tensor,
    starts: torch.Tensor,
    sizes: torch.Tensor,
    k: int,
    out: torch.Tensor,
) -> None:
    """:func:`partition_knn` on the CPU, where the partition sizes may be read."""
    M = xd.shape[0]
    # A batch of one image: one masked matrix may be cheapest. Otherwise the partitions in up
    # to three groups of similar size, each padded to its own largest (k-means partitions are
    # ragged, and one padding for all can be mostly padding).
    groups, padded = _size_groups(sizes)
    if M * (M + _ROW_COST) <= padded + _GROUP_COST:
        _knn_dense(xd, offsets, k, out)
        return
    for index, S in groups:
        _knn_padded(xd, starts[index], sizes[index], S, k, out, M)


#: The CPU cost model of the k-NN, in padded distance-matrix elements (each ~16 ns on one
#: thread: its product, key and share of the selection), fitted to ``_knn_padded`` timings: a
#: group of partitions adds ~25 small ops (~140 us), a padded row ~130 ns of ``topk``'s per-row
#: work. One masked matrix for all rows (``_knn_dense``) saves about a group's small ops.
_GROUP_COST = 9_000
_ROW_COST = 8


def _size_groups(sizes: torch.Tensor) -> tuple[list[tuple[torch.Tensor, int]], float]:
    """The non-empty partitions of ``sizes (P,)`` split into at most three groups of
    consecutive sizes, the split that pads least (``sum(members * largest^2)``, plus
    ``_GROUP_COST`` per extra group, and ``_ROW_COST`` per padded row). Returns
    ``[(partition ids, largest size)]`` and that cost.

    Plain Python over the sorted sizes (a batch of one image has 4 partitions: tensor ops would
    cost more than the search): every two-group split, and three-group splits at every cut up
    to 10 partitions, at 9 evenly spaced cuts beyond.
    """
    order = torch.argsort(sizes, descending=True, stable=True)
    s = sizes[order].tolist()
    n = sum(1 for size in s if size > 0)
    if n == 0:
        return [], 0.0
    lead = [size * (size + _ROW_COST) for size in s[:n]]  # per member of a group it leads

    def price(bounds: tuple[int, ...]) -> float:
        groups = itertools.pairwise(bounds)
        return sum((hi - lo) * lead[lo] for lo, hi in groups) + (len(bounds) - 2) * _GROUP_COST

    cuts = range(1, n) if n <= 10 else sorted({round(n * q / 10) for q in range(1, 10)})
    candidates = [(0, n)] + [(0, i, n) for i in range(1, n)]
    candidates += [(0, i, j, n) for i in cuts for j in cuts if i < j]
    best = min(candidates, key=price)  # the first of equal prices: the fewest groups
    groups = [(order[lo:hi], s[lo]) for lo, hi in itertools.pairwise(best)]
    return groups, float(price(best))


def _knn_dense(xd: torch.Tensor, offsets: torch.Tensor, k: int, out: torch.Tensor) -> None:
    """Every row against every row, pairs in different partitions excluded: a handful of ops,
    the cheapest way for a few hundred rows (a batch of one image)."""
    M = xd.shape[0]
    ends = offsets[1:]
    part = torch.bucketize(torch.arange(M, device=xd.device, dtype=ends.dtype), ends, right=True)
    sizes = (ends - offsets[:-1]).to(torch.int64)
    sq = torch.linalg.vecdot(xd, xd)
    dist = torch.addmm(sq.unsqueeze(1) + sq.unsqueeze(0), xd, xd.t(), alpha=-2)
    order = _nearest_first(dist, min(k, M), excluded=part.unsqueeze(1) != part.unsqueeze(0))
    size = sizes[part]  # (M,) members of each row's partition
    if k > M or bool((size < k).any()):
        rank = torch.arange(k, device=xd.device).unsqueeze(0) % size.unsqueeze(1)
        order = torch.gather(order, 1, rank)
    out[:M] = order.to(INDEX_DTYPE)


def _knn_padded(
    xd: torch.Tensor,
    starts: torch.Tensor,
    sizes: torch.Tensor,
    S: int,
    k: int,
    out: torch.Tensor,
    M: int,
) -> None:
    """The neighbours of the partitions ``starts``/``sizes`` (each at most S rows), padded to S,
    written into ``out`` (padding rows go to its sink row M)."""
    # Chunks of partitions keep the dense (chunk, S, S) distance block bounded.
    chunk = max(1, (1 << 24) // (S * S))
    ar = torch.arange(S, device=xd.device)
    for lo in range(0, starts.shape[0], chunk):
        st, sz = starts[lo : lo + chunk], sizes[lo : lo + chunk]
        valid = ar.unsqueeze(0) < sz.unsqueeze(1)  # (Q, S)
        rows = torch.where(valid, st.unsqueeze(1) + ar, 0)  # (Q, S)
        xp = xd.index_select(0, rows.reshape(-1)).view(*rows.shape, -1)  # (Q, S, C)
        sq = torch.linalg.vecdot(xp, xp)
        # A padding column's |x|^2 is +inf, so its distance is +inf (or NaN, ranked as +inf)
        # and it ranks after every member: it is never chosen while members remain.
        sq_column = sq.masked_fill(~valid, float("inf"))
        dist = torch.baddbmm(
            sq.unsqueeze(2) + sq_column.unsqueeze(1), xp, xp.transpose(1, 2), alpha=-2
        )
        order = _nearest_first(dist, min(k, S))  # (Q, S, min(K, S))
        if k > S or xd.device.type != "cpu" or bool((sz < k).any()):
            rank = torch.arange(k, device=xd.device).unsqueeze(0) % sz.clamp_min(1).unsqueeze(1)
            order = torch.gather(order, 2, rank.unsqueeze(1).expand(-1, S, -1))  # (Q, S, K)
        nbr = order + st.view(-1, 1, 1)
        out[torch.where(valid, rows, M)] = nbr.to(INDEX_DTYPE)


# --------------------------------------------------------------------------------------------
# Max aggregation over neighbours
# --------------------------------------------------------------------------------------------
def max_aggregate(
    x: torch.Tensor, nbr: torch.Tensor, relative: bool = True, with_argslot: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over the neighbours of every node, optionally relative to the node (MRConv).

    Args:
        x: ``(M, C)`` float features.
        nbr: ``(M, K)`` int row indices into ``x``.
        relative: ``True`` -> ``out[v] = max_k x[nbr[v, k]] - x[v]``; ``False`` -> the plain max.
        with_argslot: also return the winning slots (else an empty tensor).

    Returns:
        out ``(M, C)`` in ``x.dtype``; argslot ``(M, C)`` uint8: the neighbour slot k that won
        channel c (the first slot among equal maxima), saved for the backward pass.

    As in the kernel, ties keep the first slot and a NaN beats any number (the first NaN slot
    wins), so NaN propagates. Indices are clamped into ``[0, M)``.
    """
    M, C = x.shape
    index = nbr.long().clamp(0, max(M - 1, 0))  # never outside x (the kernel's rule)
    if not with_argslot:
        # One neighbour slot at a time: a gather and a running max of (M, C) each, where the
        # (M, K, C) gather of every slot at once outgrows the caches (b=32: ~10x slower). The
        # running max lets NaN win, as the kernel does. One thread for small batches (see
        # SINGLE_THREAD_ROWS).
        with one_cpu_thread(x, M <= SINGLE_THREAD_ROWS):
            slots = index.t().contiguous()  # (K, M)
            best = x.index_select(0, slots[0])
            for rows in slots[1:]:
                torch.maximum(best, x.index_select(0, rows), out=best)
            return _relative(best, x) if relative else best, x.new_empty(0, dtype=torch.uint8)
    # With the winning slots: torch.max over the slots returns the first slot among equal
    # maxima and lets NaN win (its first slot), the kernel's rule. Rows in chunks whose
    # (rows, K, C) gather stays in cache.
    best = torch.empty_like(x)
    slot = torch.empty(M, C, dtype=torch.int64, device=x.device)
    chunk = max(1, (1 << 19) // max(1, index.shape[1] * C))
    for lo in range(0, M, chunk):
        rows = index[lo : lo + chunk]
        gathered = x.index_select(0, rows.reshape(-1)).view(*rows.shape, C)  # (chunk, K, C)
        torch.max(gathered, 1, out=(best[lo : lo + chunk], slot[lo : lo + chunk]))
    return _relative(best, x) if relative else best, slot.to(torch.uint8)


def _relative(best: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``best - x`` computed as the kernel does: in float32 for 16-bit inputs, then rounded."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return (best.float() - x.float()).to(x.dtype)
    return best - x


def max_aggregate_backward(
    grad: torch.Tensor, nbr: torch.Tensor, argslot: torch.Tensor, relative: bool = True
) -> torch.Tensor:
    """Gradient of :func:`max_aggregate` w.r.t. ``x``: route ``grad`` to the winning neighbours.

    ``grad_x[nbr[v, argslot[v, c]], c] += grad[v, c]``; if relative also
    ``grad_x[v, c] -= grad[v, c]``.
    Accumulates in float64, returns ``grad.dtype``.
    """
    M, C = grad.shape
    slot = argslot.long().clamp(max=nbr.shape[1] - 1)
    source = torch.gather(nbr.long(), 1, slot).clamp(0, max(M - 1, 0))  # (M, C) winning rows
    g = grad.to(torch.float64)
    grad_x = torch.zeros(M, C, dtype=torch.float64, device=grad.device)
    grad_x.scatter_add_(0, source, g)
    if relative:
        grad_x -= g
    return grad_x.to(grad.dtype)


# --------------------------------------------------------------------------------------------
# The local update's inference epilogue
# --------------------------------------------------------------------------------------------
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
) -> torch.Tensor:
    """``GELU(BN(acc + bias + table[segment]))`` with the batch norm's running statistics.

    Args:
        acc: ``(M, O)`` float node products; table: ``(P, O)``, one row per partition;
            segment: ``(M,)`` int, the partition of every row (clamped into ``[0, P)``, as the
            kernel does); bias, weight, shift, running_mean, running_var: ``(O,)``; eps > 0.

    Returns:
        ``(M, O)`` in acc's dtype, computed in float32 (float64 for float64 inputs) with the
        exact (erf) GELU, rounded once.
    """
    dtype = compute_dtype(acc)
    rows = segment.long().clamp(0, max(0, table.shape[0] - 1))
    v = acc.to(dtype) + bias.to(dtype) + table.to(dtype).index_select(0, rows)
    scale = weight.to(dtype) / torch.sqrt(running_var.to(dtype) + eps)
    v = (v - running_mean.to(dtype)) * scale + shift.to(dtype)
    return torch.nn.functional.gelu(v).to(acc.dtype)


# --------------------------------------------------------------------------------------------
# Centred nodes
# --------------------------------------------------------------------------------------------
def center_tokens(x: torch.Tensor) -> torch.Tensor:
    """A feature map's nodes, mean-centred per image and channel: ``(B, C, H, W) -> (B, N, C)``
    (node ``n = h * W + w``), contiguous, in x's dtype; the mean and the difference in float32
    (float64 for float64 inputs), rounded once."""
    t = x.flatten(2).transpose(1, 2).to(compute_dtype(x))
    return (t - t.mean(dim=1, keepdim=True)).to(x.dtype).contiguous()


# --------------------------------------------------------------------------------------------
# GATv2 attention over the centroid graph
# --------------------------------------------------------------------------------------------
def gatv2_attention(
    source: torch.Tensor,
    target: torch.Tensor,
    att: torch.Tensor,
    bias: torch.Tensor,
    negative_slope: float,
) -> torch.Tensor:
    """``out_i = sum_j softmax_j(att . LeakyReLU(target_i + source_j)) source_j + bias`` over
    each image's centroids: source, target ``(B, kappa, C)``, att and bias ``(C,)`` -> ``(B, kappa,
    C)`` in source's dtype, computed in float32 (float64 for float64 inputs)."""
    dtype = compute_dtype(source)
    s, t = source.to(dtype), target.to(dtype)
    pair = F.leaky_relu(t.unsqueeze(2) + s.unsqueeze(1), negative_slope)
    alpha = torch.softmax(pair @ att.to(dtype), dim=-1)
    return (alpha @ s + bias.to(dtype)).to(source.dtype)
