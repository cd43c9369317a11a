"""PyTorch references of the partition order and of the row permutation (the contracts of their
kernels; see :mod:`kernels.reference` for the conventions shared by every reference)."""

from __future__ import annotations

import torch

from .._common import INDEX_DTYPE

__all__ = ["partition", "permute_rows"]


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
