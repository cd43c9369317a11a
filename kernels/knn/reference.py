"""PyTorch reference of the in-partition k-NN (the contract of its kernels; see
:mod:`kernels.reference` for the conventions shared by every reference)."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from .._common import INDEX_DTYPE, SINGLE_THREAD_ROWS, compute_dtype, one_cpu_thread

__all__ = ["neighbour_distances", "partition_knn"]


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


def neighbour_distances(
    x: torch.Tensor, nbr: torch.Tensor, normalize: bool = False
) -> torch.Tensor:
    """``(M, K)`` float64: the squared distance from every row of x ``(M, C)`` to each of its
    listed neighbours (``nbr (M, K)`` rows of x; with ``normalize``, of the rows scaled to unit
    length, as :func:`partition_knn` ranks them). Two lists with equal sorted distances are
    equally good answers even where their ids differ (equally near candidates)."""
    xd = x.double()
    if normalize:
        xd = F.normalize(xd, dim=-1, eps=1e-12)
    return ((xd[nbr.long()] - xd.unsqueeze(1)) ** 2).sum(-1)
