"""Layers of ClusterViG: GATv2 (paper Eq. 2-3), the G-GCN local updates, grouped linear."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clustervig.layers import (
    GGIN,
    GMRGCN,
    LOCAL_UPDATES,
    CViGStem,
    GATv2GlobalUpdate,
    GroupedLinear,
)


@torch.no_grad()
def gatv2_direct(layer: GATv2GlobalUpdate, z: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 2-3 node by node: z'_i = sum_j alpha_ji LIN_L(z_j) (+ output bias)."""
    B, kappa, _ = z.shape
    W_l, b_l = layer.lin_l.weight.double(), layer.lin_l.bias.double()
    W_r, b_r = layer.lin_r.weight.double(), layer.lin_r.bias.double()
    a = layer.att.double()
    out = torch.zeros(B, kappa, W_l.shape[0], dtype=torch.float64)
    for b in range(B):
        lin_l = [W_l @ z[b, j].double() + b_l for j in range(kappa)]
        for i in range(kappa):
            lin_r = W_r @ z[b, i].double() + b_r
            scores = [
                math.exp(float(a @ F.leaky_relu(lin_r + lin_l[j], 0.2))) for j in range(kappa)
            ]
            total = sum(scores)
            for j in range(kappa):
                out[b, i] += scores[j] / total * lin_l[j]
            out[b, i] += layer.bias.double()
    return out


@pytest.mark.parametrize("B,kappa,C", [(1, 4, 8), (3, 6, 5), (2, 1, 7)])
def test_gatv2_matches_paper_equations(B, kappa, C):
    layer = GATv2GlobalUpdate(C)
    with torch.no_grad():
        layer.bias.normal_()  # exercise the output bias too
    z = torch.randn(B, kappa, C)
    torch.testing.assert_close(layer(z).double(), gatv2_direct(layer, z), atol=1e-5, rtol=1e-5)


def test_gatv2_parameter_count():
    C = 192
    assert sum(p.numel() for p in GATv2GlobalUpdate(C).parameters()) == 2 * C * C + 4 * C


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_grouped_linear_is_a_grouped_1x1_conv(groups):
    layer = GroupedLinear(12, 8, groups)
    x = torch.randn(10, 12)
    weight = layer.weight.reshape(8, 12 // groups, 1)
    expected = F.conv1d(x.t().unsqueeze(0), weight, layer.bias, groups=groups)[0].t()
    torch.testing.assert_close(layer(x), expected)


def test_grouped_linear_rejects_bad_groups():
    with pytest.raises(ValueError, match="groups"):
        GroupedLinear(12, 8, 5)


def _graph(M: int = 12, K: int = 3):
    x = torch.randn(M, 4, requires_grad=True)
    nbr = torch.randint(0, M, (M, K), dtype=torch.int32)
    nbr[:, 0] = torch.arange(M, dtype=torch.int32)  # self loops, as in-partition k-NN gives
    z = torch.randn(M, 4)
    degree = torch.full((M,), K)
    return x, nbr, z, degree


@pytest.mark.parametrize("name", sorted(LOCAL_UPDATES))
def test_local_updates_shape_and_gradient(name):
    layer = LOCAL_UPDATES[name](4, 8, groups=2)
    x, nbr, z, degree = _graph()
    out = layer(x, nbr, z, degree)
    assert out.shape == (12, 8)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_gmrgcn_input_is_interleaved_x_max_then_centroid():
    layer = GMRGCN(3, 6).eval()
    x, nbr, z, degree = _graph(M=8, K=2)
    x = x.detach()[:, :3]
    z = z[:, :3]
    m = x[nbr.long()].max(dim=1).values - x
    h = torch.stack([x[:, 0], m[:, 0], x[:, 1], m[:, 1], x[:, 2], m[:, 2]], dim=1)
    h = torch.cat([h, z], dim=1)
    linear, norm, act = layer.mlp
    torch.testing.assert_close(layer(x, nbr, z, degree), act(norm(linear(h))))


def test_ggin_sums_distinct_neighbours_only():
    layer = GGIN(2, 4).eval()
    x = torch.randn(3, 2)
    z = torch.randn(3, 2)
    # A 2-node partition {0, 1} with K = 4: slots repeat members cyclically, degree 2.
    nbr = torch.tensor([[0, 1, 0, 1], [1, 0, 1, 0], [2, 2, 2, 2]], dtype=torch.int32)
    degree = torch.tensor([2, 2, 1])
    expected_sum = torch.stack([x[0] + x[1], x[1] + x[0], x[2]])
    linear, norm, act = layer.mlp
    expected = act(norm(linear(x + expected_sum + z)))
    torch.testing.assert_close(layer(x, nbr, z, degree), expected)


@pytest.mark.parametrize("img,grid,strides", [(224, 14, 4), (224, 28, 3), (64, 16, 2)])
def test_cvig_stem_reduces_to_the_grid(img, grid, strides):
    stem = CViGStem(96, img, grid)
    assert stem.num_halvings == strides
    assert stem(torch.randn(1, 3, img, img)).shape == (1, 96, grid, grid)


def test_cvig_stem_rejects_a_grid_it_cannot_reach():
    with pytest.raises(ValueError, match="power of two"):
        CViGStem(96, 224, 15)
