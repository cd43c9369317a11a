"""DEGC end to end against a direct, image-by-image computation of the paper's definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clustervig.degc import DEGC
from kernels import reference


def degc_direct(layer: DEGC, x: torch.Tensor) -> torch.Tensor:
    """One image at a time, node by node, with no partition reordering: cluster (reference
    k-means), K nearest of each node among its own cluster's nodes, GATv2 on the centroids, then
    the G-MRGCN update x'_v = MLP([x_v, max_u(x_u - x_v) interleaved | z'_p(v)])."""
    B, C, H, W = x.shape
    N, K = H * W, layer.k
    outputs = []
    for b in range(B):
        t = x[b].flatten(1).t()
        t = t - t.mean(0, keepdim=True)
        labels, centroids, _ = reference.kmeans(
            t.unsqueeze(0), layer.num_clusters, layer.kmeans_iters
        )
        labels = labels[0]
        z = layer.global_update(centroids)[0]
        unit = F.normalize(t, dim=-1).double()
        rows = []
        for v in range(N):
            members = [u for u in range(N) if labels[u] == labels[v]]
            ranked = sorted(members, key=lambda u: (float(((unit[v] - unit[u]) ** 2).sum()), u))
            nbrs = [ranked[s % len(ranked)] for s in range(K)]
            m = torch.stack([t[u] - t[v] for u in nbrs]).max(0).values
            h = torch.stack([t[v], m], dim=1).flatten()
            rows.append(torch.cat([h, z[labels[v]]]))
        outputs.append(torch.stack(rows))
    h = torch.cat(outputs)  # (B*N, 3C), image order
    out = layer.local_update.mlp(h)  # BatchNorm statistics over all nodes of the batch
    return out.reshape(B, N, -1).transpose(1, 2).reshape(B, -1, H, W)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize(
    "B,C,H,W,K,kappa", [(2, 6, 5, 6, 4, 3), (1, 4, 7, 7, 9, 4), (3, 5, 3, 4, 5, 5)]
)
def test_degc_matches_direct_computation(B, C, H, W, K, kappa, train):
    layer = DEGC(C, k=K, num_clusters=kappa).train(train)
    x = torch.randn(B, C, H, W)
    torch.testing.assert_close(layer(x), degc_direct(layer, x), atol=1e-5, rtol=1e-5)


def test_degc_gradient_reaches_input_and_weights():
    layer = DEGC(6, k=4, num_clusters=3)
    x = torch.randn(2, 6, 4, 5, requires_grad=True)
    layer(x).square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("local_update", ["mrgcn", "edgeconv", "graphsage", "gin"])
def test_degc_local_update_variants(local_update):
    layer = DEGC(8, k=5, num_clusters=3, local_update=local_update, groups=2)
    assert layer(torch.randn(2, 8, 4, 4)).shape == (2, 16, 4, 4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"k": 0}, "'k'"),
        ({"k": 33}, "'k'"),
        ({"num_clusters": 0}, "'num_clusters'"),
        ({"local_update": "gcn"}, "'local_update'"),
        ({"kmeans_iters": 0}, "'kmeans_iters'"),
    ],
)
def test_degc_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DEGC(8, **kwargs)


def test_degc_rejects_more_clusters_than_nodes():
    layer = DEGC(4, k=3, num_clusters=6)
    with pytest.raises(ValueError, match="num_clusters"):
        layer(torch.randn(1, 4, 2, 2))
