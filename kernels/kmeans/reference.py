"""PyTorch reference of batched k-means (the contract of its kernels; see :mod:`kernels.reference`
for the conventions shared by every reference)."""

from __future__ import annotations

import torch

from .._common import INDEX_DTYPE, compute_dtype, one_cpu_thread

__all__ = ["kmeans", "kmeans_init_index", "kmeans_objective"]


def kmeans_init_index(
    num_nodes: int, num_clusters: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Deterministic initial centroids: nodes spread evenly over the raster order.

    Centroid ``k`` starts at node ``((2k + 1) * N) // (2 * kappa)``, the middle of the k-th of
    kappa equal runs of nodes, so the start is reproducible and needs no RNG.
    Returns int64 ``(kappa,)`` on ``device`` (made there: no host copy, nothing to capture).
    """
    k = torch.arange(num_clusters, dtype=torch.int64, device=device)
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


def kmeans_objective(
    x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor
) -> torch.Tensor:
    """``(B,)`` float64: each image's sum of squared distances from its nodes to the centroid
    they are labelled with. x ``(B, N, C)``, labels ``(B, N)`` in ``[0, kappa)``, centroids
    ``(B, kappa, C)``. Two clusterings with equal objectives are equally good answers even where
    their labels differ (a node almost equidistant from two centroids)."""
    index = labels.long().clamp(0, centroids.shape[1] - 1).unsqueeze(-1).expand(-1, -1, x.shape[2])
    chosen = torch.gather(centroids.double(), 1, index)
    return ((x.double() - chosen) ** 2).sum(dim=(1, 2))
