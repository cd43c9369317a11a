"""Graph-layer scaling: one DEGC layer against one dense k-NN graph layer (ViG's) as the number
of nodes grows (N = 196, 784, 3136: 14x14, 28x28, 56x56 grids), time and peak memory.

Two comparisons per size: the graph construction alone (DEGC: k-means, partition order, k-NN
inside the partitions; dense: k-NN over all N nodes) and the whole layer (DEGC with its GATv2 and
G-MRGCN update; dense: ViG's max-relative graph conv). The whole layers do different amounts of
dense work (DEGC's 3C -> 2C update is larger), so the graph rows isolate what partitioning buys.
"""

from __future__ import annotations

import contextlib
import gc

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from clustervig.baselines.graph import MRConv, dense_dilated_knn
from clustervig.degc import DEGC

from .common import environment, progress, time_call
from .schema import SCHEMA_VERSION

GRIDS = (14, 28, 56)
CLUSTERS = {14: 4, 28: 6, 56: 6}  # kappa per grid (the paper keeps kappa <= 6)


class DenseGraphLayer(nn.Module):
    """ViG's graph layer without pooling or relative position: k-NN over all N nodes of the image
    (an N x N distance matrix), then max-relative aggregation and a grouped 1x1 conv to 2C."""

    def __init__(self, channels: int, k: int = 9):
        super().__init__()
        self.k = k
        self.conv = MRConv(channels, 2 * channels, groups=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = x.flatten(2).transpose(1, 2)
        idx = dense_dilated_knn(nodes, nodes, self.k)
        return self.conv(x, nodes, idx)


class DEGCGraph(nn.Module):
    """DEGC's graph construction alone: centring, k-means, partition order, in-partition k-NN."""

    def __init__(self, channels: int, k: int, num_clusters: int):
        super().__init__()
        self.k, self.num_clusters = k, num_clusters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = (tokens - tokens.mean(1, keepdim=True)).contiguous()
        labels, _, _ = kernels.batched_kmeans(tokens, self.num_clusters)
        perm, _, offsets, _ = kernels.partition(labels, self.num_clusters)
        rows = tokens.reshape(B * H * W, C)
        return kernels.partition_knn(rows, offsets, self.k, H * W, perm=perm, normalize=True)


class DenseGraph(nn.Module):
    """Dense graph construction alone: k-NN over all N nodes of the image."""

    def __init__(self, channels: int, k: int):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = x.flatten(2).transpose(1, 2)
        return dense_dilated_knn(nodes, nodes, self.k)


def layers(channels: int, grid: int, k: int) -> dict[str, nn.Module]:
    return {
        "degc_graph": DEGCGraph(channels, k, CLUSTERS.get(grid, 4)),
        "dense_graph": DenseGraph(channels, k),
        "degc": DEGC(channels, k=k, num_clusters=CLUSTERS.get(grid, 4)),
        "dense_knn": DenseGraphLayer(channels, k=k),
    }


def run(
    device: torch.device,
    batch_size: int,
    channels: int = 192,
    k: int = 9,
    grids: tuple[int, ...] = GRIDS,
    dtype: torch.dtype = torch.float32,
    warmup: int = 2,
    repeats: int = 10,
) -> dict:
    rows = []
    for grid in grids:
        for name, layer in layers(channels, grid, k).items():
            layer = layer.eval().to(device)
            row = {
                "layer": name,
                "nodes": grid * grid,
                "grid": grid,
                "batch_size": batch_size,
                "channels": channels,
                "k": k,
                "dtype": str(dtype).replace("torch.", ""),
                "num_clusters": CLUSTERS.get(grid, 4) if name.startswith("degc") else None,
            }
            try:
                x = F.normalize(torch.randn(batch_size, channels, grid, grid, device=device), dim=1)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                autocast = (
                    torch.autocast(device.type, dtype=dtype)
                    if dtype != torch.float32
                    else contextlib.nullcontext()
                )

                def forward():
                    with torch.no_grad(), autocast:
                        return layer(x)

                timing = time_call(forward, device, warmup=warmup, repeats=repeats)
                row.update(
                    status="ok",
                    **timing.as_dict(),
                    peak_memory_mib=(
                        (torch.cuda.max_memory_allocated(device) - base) / 2**20
                        if device.type == "cuda"
                        else None
                    ),
                )
                progress(f"[scaling] {name:11s} N={grid * grid:5d} {row['median_ms']:9.2f} ms")
            except torch.cuda.OutOfMemoryError:
                row.update(status="oom", error="CUDA out of memory")
                progress(f"[scaling] {name:11s} N={grid * grid:5d} OOM")
            finally:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
    return {
        "kind": "scaling",
        "schema": SCHEMA_VERSION,
        "environment": environment(device),
        "settings": {
            "channels": channels,
            "k": k,
            "batch_size": batch_size,
            "dtype": str(dtype).replace("torch.", ""),
        },
        "rows": rows,
    }
