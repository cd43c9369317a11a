"""The DEGC ops in standard ONNX operators, swapped in while a model is exported
(:func:`onnx_ops`, used by :func:`clustervig.export.export_onnx`).

ONNX has no k-means, no ragged k-NN and none of this project's custom ops. The translations keep
what makes ClusterViG cheaper than a dense ViG:

- **k-means** is an ONNX ``Loop`` that stops when no label of any image changed (or at the cap),
  as the op does: an image that converged earlier is a fixed point, so the extra iterations of
  a batch give it the same labels and centroids (:func:`kmeans`);
- **the partition order** comes from a sort of ``label * N + node`` per image;
- **the in-partition k-NN** ranks each partition against itself only: the batch's partitions
  padded to the largest one (``P x P`` distance blocks, about ``N^2 / kappa`` per image instead
  of ``N^2``), nearest first with ties to the lower index, a partition smaller than K repeating
  its members as the op does (:func:`partition_knn`);
- the max aggregation as ``Gather`` + ``ReduceMax``; the centring, the GATv2 attention and the
  local update's epilogue as their PyTorch references (standard operators already).

Every shape is computed from the input, so the graph takes any batch size (the export's
``dynamic_batch``). Run eagerly, the translations give the custom ops' results (tests).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels import reference
from kernels.reference import kmeans_init_index

from . import degc, graph_updates

__all__ = ["kmeans", "max_aggregate", "onnx_ops", "partition", "partition_knn"]


def _assign(xt: Tensor, z: Tensor) -> Tensor:
    """Nearest centroid of every node, ``(B, N)`` int64, from the nodes transposed ``xt (B, C,
    N)`` and the centroids ``z (B, kappa, C)``: ``argmax x.z - |z|^2 / 2`` (the argmin of the
    squared distance: ``|x|^2`` is the same for every centroid), first maximum on ties, a NaN
    score as -inf (the op's rule that a NaN distance counts as +inf)."""
    score = torch.bmm(z, xt) - 0.5 * (z * z).sum(-1, keepdim=True)  # (B, kappa, N)
    score = torch.where(torch.isnan(score), torch.full_like(score, -float("inf")), score)
    return score.argmax(1)


def _mean(x: Tensor, labels: Tensor, previous: Tensor, clusters: Tensor) -> Tensor:
    """Every cluster's mean ``(B, kappa, C)`` of nodes ``x (B, N, C)``, the cluster ids
    ``clusters (1, kappa, 1)``; an empty cluster keeps its ``previous`` centroid. The one-hot
    matrix is built ``(B, kappa, N)``, the way round the product wants it (no transposes)."""
    onehot = (labels.unsqueeze(1) == clusters).to(x.dtype)  # (B, kappa, N)
    counts = onehot.sum(2, keepdim=True)
    return torch.where(counts > 0, torch.bmm(onehot, x) / counts.clamp(min=1.0), previous)


def _lloyd(x: Tensor, z: Tensor, num_clusters: int, max_iters: int) -> tuple[Tensor, Tensor]:
    """Lloyd iterations until no label of the batch changed or ``max_iters`` updates ran; the
    centroids returned are the means of the labels returned. Scripted (:func:`_scripted_lloyd`),
    the ``while`` becomes an ONNX ``Loop`` whose condition is computed in the graph; its body is
    kept to ~20 small operators (the loop's cost in ONNX Runtime is mostly per operator)."""
    xt = x.transpose(1, 2)  # (B, C, N), once
    clusters = torch.arange(num_clusters, device=x.device).view(1, num_clusters, 1)
    labels = _assign(xt, z)
    # One tensor condition (label changed, and below the cap): an ``and`` of two conditions
    # would add an ``If`` to every pass of the exported loop.
    more = torch.full((), max_iters > 0, dtype=torch.bool)
    updates = 0
    while bool(more):
        z = _mean(x, labels, z, clusters)
        new = _assign(xt, z)
        updates += 1
        more = (new != labels).any() & (updates < max_iters)
        labels = new
    return labels, _mean(x, labels, z, clusters)


@functools.cache
def _scripted_lloyd():
    """:func:`_lloyd` under TorchScript, compiled once: the tracing exporter keeps a scripted
    loop as a loop (a Python loop would be unrolled to ``max_iters`` copies)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        return torch.jit.script(_lloyd)


def kmeans(x: Tensor, num_clusters: int, max_iters: int = 20) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`kernels.batched_kmeans` as a loop of standard operators (module docstring). The
    iteration counts returned are the cap for every image (the model does not read them)."""
    B, N, _ = x.shape
    z = x[:, kmeans_init_index(N, num_clusters)]
    lloyd = _scripted_lloyd() if torch.jit.is_tracing() else _lloyd
    labels, z = lloyd(x, z, num_clusters, max_iters)
    iterations = torch.full((B,), max_iters, dtype=torch.int32)
    return labels.to(torch.int32), z, iterations


def partition(labels: Tensor, num_clusters: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`kernels.partition`: each image's nodes in (cluster, node) order."""
    B, N = labels.shape
    lab = labels.long()
    node = torch.arange(N).unsqueeze(0)
    order = torch.argsort(lab * N + node, dim=1)  # keys are distinct: the order is unique
    perm = (order + torch.arange(B).unsqueeze(1) * N).reshape(-1)
    inverse = torch.argsort(perm)
    counts = F.one_hot(lab, num_clusters).sum(1).reshape(-1)  # (B * kappa,)
    offsets = torch.cat([torch.zeros(1, dtype=counts.dtype), torch.cumsum(counts, 0)])
    segment = (lab + torch.arange(B).unsqueeze(1) * num_clusters).reshape(-1)
    return perm.int(), inverse.int(), offsets.int(), segment.int()


def partition_knn(
    x: Tensor,
    offsets: Tensor,
    k: int,
    max_partition_size: int | None = None,
    perm: Tensor | None = None,
    normalize: bool = False,
) -> Tensor:
    """:func:`kernels.partition_knn`: rows gathered into partition order through ``perm`` (if
    given), optionally L2-normalised, ranked inside their partitions
    (:func:`_partition_ordered_knn`), and the lists written back to the rows of x as rows of x."""
    if normalize:
        x = F.normalize(x, dim=-1, eps=1e-12)
    if perm is None:
        return _partition_ordered_knn(x, offsets, k)
    index = perm.long()
    nbr = _partition_ordered_knn(x.index_select(0, index), offsets, k).long()
    ids = index[nbr]  # (M, K) rows of x
    out = torch.zeros_like(ids).scatter(0, index.unsqueeze(1).expand(-1, k), ids)
    return out.int()


def _partition_ordered_knn(x: Tensor, offsets: Tensor, k: int) -> Tensor:
    """K nearest rows of every row ``x (M, C)`` in partition order, inside its partition.

    The ``P`` partitions (``offsets (P + 1,)``) padded to ``W = max(largest, K)`` slots: the
    products of each partition's members with each other, one ``(P, W, W)`` batched product,
    of which only the rows of real members are kept (``(M, W)``: ``TopK`` never ranks padding
    rows); the squared distances with the padding columns excluded (+inf, after every member
    even one at a NaN distance, since ties go to the lower slot), a negative distance
    (rounding) clamped to 0, then ``TopK``; a partition of ``s < K`` members gives slot ``j``
    its member of rank ``j % s``. Returns ``(M, K)`` int32 rows of x.
    """
    M = x.shape[0]
    starts = offsets[:-1].long()
    sizes = (offsets[1:] - offsets[:-1]).long()  # (P,)
    width = torch.clamp(sizes.max(), min=k)  # TopK needs K slots, even in a short partition
    slot = torch.arange(width)  # (W,)
    member = slot.unsqueeze(0) < sizes.unsqueeze(1)  # (P, W)
    rows = torch.where(member, starts.unsqueeze(1) + slot, torch.zeros_like(member).long())
    xp = x[rows]  # (P, W, C): each partition's members, padded
    row = torch.arange(M)
    part = (row.unsqueeze(1) >= offsets[1:].long().unsqueeze(0)).sum(1)  # (M,) its partition
    place = part * width + (row - starts[part])  # (M,) its (partition, slot)
    products = torch.bmm(xp, xp.transpose(1, 2)).reshape(-1, xp.shape[1])[place]  # (M, W)
    sq = (xp * xp).sum(-1)  # (P, W), the same sums as the rows' own
    dist = (x * x).sum(-1, keepdim=True) + sq[part] - 2.0 * products
    inf = torch.full_like(dist, float("inf"))
    dist = torch.where(torch.isnan(dist), inf, dist.clamp(min=0.0))
    dist = torch.where(member[part], dist, inf)
    order = torch.topk(dist, k, dim=-1, largest=False, sorted=True).indices  # (M, K)
    rank = torch.arange(k).unsqueeze(0) % sizes[part].clamp(min=1).unsqueeze(1)  # repeat rule
    return (torch.gather(order, 1, rank) + starts[part].unsqueeze(1)).int()


def max_aggregate(x: Tensor, nbr: Tensor, relative: bool = True) -> Tensor:
    """:func:`kernels.max_aggregate`: ``Gather`` + ``ReduceMax`` (minus the node if relative).
    (Measured in ONNX Runtime at CViG-Ti's b=8 layer size: as fast as K gathers joined by
    pairwise ``Max``, 1.7x faster than gathering slot-major and reducing the outer axis.)"""
    M, K = nbr.shape
    best = x.index_select(0, nbr.reshape(-1).long()).reshape(M, K, -1).amax(1)
    return best - x if relative else best


@contextlib.contextmanager
def onnx_ops(model: nn.Module) -> Iterator[None]:
    """While exporting ``model`` to ONNX: the DEGC ops as standard operators (module docstring)
    and no value checks of the input (a traced model cannot branch on values)."""
    swaps = [
        (degc, "center_tokens", reference.center_tokens),
        (graph_updates, "gatv2_attention", reference.gatv2_attention),
        (graph_updates, "segment_norm_gelu", reference.segment_norm_gelu),
        (degc, "batched_kmeans", kmeans),
        (degc, "partition", partition),
        (degc, "partition_knn", partition_knn),
        (graph_updates, "max_aggregate", max_aggregate),
    ]
    saved = [(module, name, getattr(module, name)) for module, name, _ in swaps]
    checks = [(m, m.validate_inputs) for m in model.modules() if hasattr(m, "validate_inputs")]
    try:
        for module, name, replacement in swaps:
            setattr(module, name, replacement)
        for m, _ in checks:
            m.validate_inputs = False
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)
        for m, flag in checks:
            m.validate_inputs = flag
