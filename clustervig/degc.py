"""Dynamic Efficient Graph Convolution (paper Sec. IV-A/B, Algorithm 2).

partition (batched k-means + partition order) -> graph (k-NN inside each partition) ->
global update (GATv2 over the centroids) -> local update (a G-GCN over each partition's graph).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from kernels import batched_kmeans, center_tokens, one_cpu_thread, partition, partition_knn
from kernels._common import MAX_CLUSTERS, MAX_NEIGHBORS, SINGLE_THREAD_ROWS

from .graph_updates import LOCAL_UPDATES, GATv2GlobalUpdate
from .layers import SMALL_BATCH_ROWS, nodes_to_map

__all__ = ["DEGC", "PartitionGraph"]


class PartitionGraph(NamedTuple):
    """What steps (1) and (2) of a DEGC layer build for B images of N nodes."""

    labels: Tensor  # (B, N) int32: the cluster of every node
    centroids: Tensor  # (B, kappa, C): the cluster means
    neighbours: Tensor  # (B*N, K) int32: K nearest nodes in the node's partition, image-order rows
    segment: Tensor  # (B*N,) int32: the partition (b * kappa + label) of every node
    degree: Tensor | None  # (B*N,): distinct neighbours, min(K, partition size), if needed


class DEGC(nn.Module):
    """One DEGC layer: ``(B, C, H, W) -> (B, C_out, H, W)`` (``C_out = 2C`` in ClusterViG).

    Args:
        channels: C, input channels.
        k: K, neighbours per node inside its partition (1..32).
        num_clusters: kappa, partitions per image (1..16, at most H*W).
        out_channels: output channels (default 2C).
        local_update: ``"mrgcn"`` (G-MRGCN, default), ``"edgeconv"``, ``"graphsage"`` or ``"gin"``.
        groups: channel groups of the local-update MLP (1 = dense).
        kmeans_iters: cap on Lloyd iterations (the paper uses 20).

    Node features are mean-centred per image and channel before clustering, and every later step
    uses the centred features (as the authors' code does). k-means runs without gradient; k-NN
    runs on the L2-normalised centred features, so its distance is ``2 - 2 cos``.
    """

    def __init__(
        self,
        channels: int,
        k: int = 9,
        num_clusters: int = 4,
        out_channels: int | None = None,
        local_update: str = "mrgcn",
        groups: int = 1,
        kmeans_iters: int = 20,
    ):
        super().__init__()
        if not 1 <= k <= MAX_NEIGHBORS:
            raise ValueError(f"DEGC: argument 'k' must be in [1, {MAX_NEIGHBORS}], got {k}")
        if not 1 <= num_clusters <= MAX_CLUSTERS:
            raise ValueError(
                f"DEGC: argument 'num_clusters' must be in [1, {MAX_CLUSTERS}], got {num_clusters}"
            )
        if kmeans_iters < 1:
            raise ValueError(f"DEGC: argument 'kmeans_iters' must be >= 1, got {kmeans_iters}")
        local_update = local_update.lower() if isinstance(local_update, str) else local_update
        if local_update not in LOCAL_UPDATES:
            raise ValueError(
                f"DEGC: argument 'local_update' must be one of {sorted(LOCAL_UPDATES)}, "
                f"got {local_update!r}"
            )
        self.channels = channels
        self.out_channels = out_channels or 2 * channels
        self.k = k
        self.num_clusters = num_clusters
        self.kmeans_iters = kmeans_iters
        self.global_update = GATv2GlobalUpdate(channels)
        self.local_update = LOCAL_UPDATES[local_update](channels, self.out_channels, groups)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        if B == 0:  # an empty batch: nothing to cluster
            return x.new_zeros(0, self.out_channels, H, W)
        rows = B * H * W
        # On the CPU, steps (1)-(3) of a small batch run on one thread, as does the centroid
        # graph always: their ops are too small to repay waking a thread pool (see
        # kernels.one_cpu_thread). The local update's products repay it sooner.
        with one_cpu_thread(x, rows <= SINGLE_THREAD_ROWS):
            tokens = self.tokens(x)  # (B, N, C), mean-centred per image
            nodes = tokens.reshape(rows, C)  # image order: row b * N + n

            # (1) Partition and (2) graph.
            graph = self.build_graph(tokens)

            # (3) Global update: GATv2 over each image's complete centroid graph.
            with one_cpu_thread(x):
                z = self.global_update(graph.centroids).reshape(B * self.num_clusters, -1)

        # (4) Local update: a G-GCN on every partition, aware of its updated centroid.
        with one_cpu_thread(x, rows <= SMALL_BATCH_ROWS):
            out = self.local_update(nodes, graph.neighbours, z, graph.segment, graph.degree)
        return nodes_to_map(out, B, H, W)

    @staticmethod
    def tokens(x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> nodes ``(B, N, C)`` (node n = h * W + w), mean-centred per image
        and channel (every later step uses the centred features, as the authors' code does)."""
        return center_tokens(x)

    def build_graph(self, tokens: Tensor) -> PartitionGraph:
        """Steps (1) and (2) of the layer on nodes ``(B, N, C)``: the partition and the graph."""
        B, N, C = tokens.shape
        # (1) Partition: batched k-means, then the partition order of the nodes (X_ua).
        labels, centroids, _ = batched_kmeans(tokens, self.num_clusters, self.kmeans_iters)
        perm, _, offsets, segment = partition(labels, self.num_clusters)

        # (2) Graph: K nearest neighbours inside each partition by the distance of the
        # L2-normalised features (no gradient flows through the choice of neighbours). The op
        # visits the nodes in partition order through ``perm`` and returns image-order rows, so
        # the local update reads the nodes where they are: no permuted copy of the features.
        nodes = tokens.reshape(B * N, C).detach()
        nbr = partition_knn(nodes, offsets, self.k, N, perm=perm, normalize=True)  # (B*N, K)

        degree = None
        if self.local_update.needs_degree:  # a sum over neighbours counts distinct ones only
            degree = torch.clamp((offsets[1:] - offsets[:-1])[segment.long()], max=self.k)
        return PartitionGraph(labels, centroids, nbr, segment, degree)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, out_channels={self.out_channels}, k={self.k}, "
            f"num_clusters={self.num_clusters}, kmeans_iters={self.kmeans_iters}"
        )
