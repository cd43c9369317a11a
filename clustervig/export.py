"""Export to ONNX and ``torch.export``: ``python -m clustervig export NAME --format onnx|pt2``.

ONNX has no k-means, no ragged k-NN and no custom ops of this project, so :func:`onnx_ops`
swaps the DEGC ops for translations built from standard operators while a model is exported:

- k-means as a fixed count of Lloyd iterations (an image that has converged is a fixed point,
  so the extra iterations change nothing: same labels and centroids as the early-stopping ops);
- the partition order from a sort of ``label * N + node`` per image;
- the in-partition k-NN as each image's distance matrix with the pairs of different partitions
  excluded, then ``TopK`` (a partition smaller than K repeats its members, as the op does);
- the max aggregation as ``Gather`` + ``ReduceMax``;
- the centring, the GATv2 attention and the local update's epilogue as their PyTorch
  references (standard operators already).

``torch.export`` keeps the custom ops (they have fake implementations), so the exported program
runs the same kernels as the eager model.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels import reference
from kernels.reference import kmeans_init_index

from . import degc, graph_updates

__all__ = ["export_onnx", "export_program", "onnx_ops"]

ONNX_OPSET = 17


def _kmeans(x: Tensor, num_clusters: int, max_iters: int = 20) -> tuple[Tensor, Tensor, Tensor]:
    """Lloyd k-means with ``max_iters`` updates for every image (see the module docstring)."""
    B, N, C = x.shape
    z = x[:, kmeans_init_index(N, num_clusters)]

    def assign(z: Tensor) -> Tensor:
        dist = (z * z).sum(-1).unsqueeze(1) - 2.0 * torch.bmm(x, z.transpose(1, 2))
        return torch.where(torch.isnan(dist), torch.full_like(dist, float("inf")), dist).argmin(-1)

    def mean(labels: Tensor, previous: Tensor) -> Tensor:
        onehot = F.one_hot(labels, num_clusters).to(x.dtype)  # (B, N, kappa)
        counts = onehot.sum(1).unsqueeze(-1)
        sums = torch.bmm(onehot.transpose(1, 2), x)
        return torch.where(counts > 0, sums / counts.clamp(min=1.0), previous)

    labels = assign(z)
    for _ in range(max_iters):
        z = mean(labels, z)
        labels = assign(z)
    z = mean(labels, z)
    iterations = torch.full((B,), max_iters, dtype=torch.int32)
    return labels.to(torch.int32), z, iterations


def _partition(labels: Tensor, num_clusters: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    B, N = labels.shape
    lab = labels.long()
    node = torch.arange(N).unsqueeze(0)
    order = torch.argsort(lab * N + node, dim=1)  # (image, cluster, node) order: stable
    perm = (order + torch.arange(B).unsqueeze(1) * N).reshape(-1)
    inverse = torch.argsort(perm)
    counts = F.one_hot(lab, num_clusters).sum(1).reshape(-1)  # (B * kappa,)
    offsets = torch.cat([torch.zeros(1, dtype=counts.dtype), torch.cumsum(counts, 0)])
    segment = (lab + torch.arange(B).unsqueeze(1) * num_clusters).reshape(-1)
    return perm.int(), inverse.int(), offsets.int(), segment.int()


def _partition_knn(
    x: Tensor, offsets: Tensor, k: int, max_partition_size: int, perm=None, normalize=False
) -> Tensor:
    """:func:`kernels.partition_knn`: rows gathered into partition order through ``perm`` (an
    int32 tensor, if given), optionally L2-normalised, ranked by :func:`_partition_ordered_knn`,
    and the lists scattered back to the rows of x as rows of x."""
    if normalize:
        x = F.normalize(x, dim=-1, eps=1e-12)
    if perm is None:
        return _partition_ordered_knn(x, offsets, k, max_partition_size)
    index = perm.long()
    nbr = _partition_ordered_knn(x.index_select(0, index), offsets, k, max_partition_size)
    ids = index[nbr.long()]  # (M, K) rows of x
    out = torch.zeros_like(ids).scatter(0, index.unsqueeze(1).expand(-1, k), ids)
    return out.int()


def _partition_ordered_knn(x: Tensor, offsets: Tensor, k: int, max_partition_size: int) -> Tensor:
    """Rows in partition order, image-major (as :func:`kernels.partition` lays them out): each
    image's ``N x N`` distances with other partitions' rows excluded."""
    M, C = x.shape
    N = max_partition_size
    B = M // N
    row = torch.arange(M)
    part = (row.unsqueeze(1) >= offsets[1:].long().unsqueeze(0)).sum(1)  # (M,) partition
    size = (offsets[1:] - offsets[:-1]).long()[part]  # (M,) members of the row's partition
    xi = x.reshape(B, N, C)
    sq = (xi * xi).sum(-1)
    dist = sq.unsqueeze(2) + sq.unsqueeze(1) - 2.0 * torch.bmm(xi, xi.transpose(1, 2))
    dist = torch.where(torch.isnan(dist), torch.full_like(dist, float("inf")), dist)
    p = part.reshape(B, N)
    other = p.unsqueeze(2) != p.unsqueeze(1)
    dist = torch.where(other, torch.full_like(dist, float("inf")), dist)
    order = torch.topk(dist, min(k, N), dim=-1, largest=False, sorted=True).indices  # (B, N, k')
    rank = torch.arange(k).unsqueeze(0) % size.reshape(B, N, 1).clamp(min=1)  # repeat rule
    nbr = torch.gather(order, 2, rank) + (torch.arange(B) * N).reshape(B, 1, 1)
    return nbr.reshape(M, k).int()


def _max_aggregate(x: Tensor, nbr: Tensor, relative: bool = True) -> Tensor:
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
        (degc, "batched_kmeans", _kmeans),
        (degc, "partition", _partition),
        (degc, "partition_knn", _partition_knn),
        (graph_updates, "max_aggregate", _max_aggregate),
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


def export_onnx(model: nn.Module, path: str | Path, img_size: int = 224, batch: int = 1) -> Path:
    """Write ``model`` (eval mode, CPU) as ONNX for ``(batch, 3, img_size, img_size)`` inputs."""
    model = model.eval().cpu()
    x = torch.randn(batch, 3, img_size, img_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with onnx_ops(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python ints and the legacy API
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return path


def export_program(model: nn.Module, path: str | Path, img_size: int = 224, batch: int = 1):
    """Write ``torch.export.export(model)`` (the custom ops kept) as a ``.pt2`` file."""
    model = model.eval().cpu()
    validate = getattr(model, "validate_inputs", None)
    if validate is not None:
        model.validate_inputs = False  # value checks are data-dependent: not exportable
    try:
        program = torch.export.export(model, (torch.randn(batch, 3, img_size, img_size),))
    finally:
        if validate is not None:
            model.validate_inputs = validate
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path
