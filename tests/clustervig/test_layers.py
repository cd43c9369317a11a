"""Layers of ClusterViG: GATv2 (paper Eq. 2-3), the G-GCN local updates, grouped linear."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clustervig import layers
from clustervig.graph_updates import GGIN, GMRGCN, LOCAL_UPDATES, GATv2GlobalUpdate
from clustervig.grouped_linear import GroupedLinear
from clustervig.layers import CViGStem


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


def test_grouped_linear_parts_write_each_group_into_its_columns():
    """In inference the groups' products write into their columns of one output (no
    concatenation): the same values as with autograd and as the layer on the materialised
    input, with zeros from a group no part reaches; under autocast the products stay the
    autocast ones (out= does not autocast, so that path is not taken)."""
    layer = GroupedLinear(16, 8, 4)  # 4 input channels and 2 outputs a group
    x, z = torch.randn(10, 6), torch.randn(3, 2)
    segment = torch.randint(0, 3, (10,))
    dense = torch.zeros(10, 16)
    dense[:, 0:6], dense[:, 14:16] = x, z[segment]  # channels 6..13 (group 2 whole) no part
    expected = layer(dense)
    with torch.no_grad():
        nodes, centroids = layer.project_parts([(0, 1, x)], [(14, 1, z)])
        assert nodes.is_contiguous() and centroids.shape == (3, 8)
        assert torch.equal(nodes[:, 4:8], torch.zeros(10, 4))  # groups 2 and 3: no node part
        direct = layer.forward_parts([(0, 1, x)], [(14, 1, z)], segment)
    torch.testing.assert_close(direct, expected)
    torch.testing.assert_close(layer.forward_parts([(0, 1, x)], [(14, 1, z)], segment), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = layer.forward_parts([(0, 1, x)], [(14, 1, z)], segment)  # separate products
        with torch.no_grad():
            mixed = layer.forward_parts([(0, 1, x)], [(14, 1, z)], segment)
    assert torch.equal(mixed, autocast.detach())  # bf16 products, as with autograd


@pytest.mark.parametrize("groups", [1, 2])
def test_grouped_linear_parts_cache_follows_the_weight(groups):
    """forward_parts on the interleaved MRGCN layout equals the layer on the materialised
    input; in inference its weight columns are cached, and any change of the weight (an
    optimiser step, load_state_dict, a dtype change) is seen by the next call."""
    layer = GroupedLinear(12, 8, groups)
    x, agg, z = torch.randn(10, 4), torch.randn(10, 4), torch.randn(3, 4)
    segment = torch.randint(0, 3, (10,))

    def both():
        parts = layer.forward_parts([(0, 2, x), (1, 2, agg)], [(8, 1, z)], segment)
        dense = torch.stack([x, agg], 2).reshape(10, 8)
        return parts, layer(torch.cat([dense, z[segment]], 1))

    for _ in range(2):  # trained path (no cache), then inference twice (cache filled, reused)
        parts, expected = both()
        torch.testing.assert_close(parts, expected)
        with torch.no_grad():
            parts, expected = both()
            torch.testing.assert_close(parts, expected)
            torch.testing.assert_close(both()[0], expected)
            layer.weight.mul_(-0.5)  # an in-place update: the cached columns are stale
            torch.testing.assert_close(*both())
    layer.load_state_dict({"weight": torch.randn(layer.weight.shape), "bias": layer.bias})
    with torch.inference_mode():  # the cache refilled with inference-mode copies
        torch.testing.assert_close(*both())
    # A frozen layer after inference mode, differentiated w.r.t. its input (saliency maps): the
    # inference-mode copies must not reach the backward.
    layer.requires_grad_(False)
    x.requires_grad_(True)
    parts, expected = both()
    torch.testing.assert_close(parts, expected)
    (grad,) = torch.autograd.grad(parts.sum(), x)
    assert torch.isfinite(grad).all()
    with torch.no_grad():
        torch.testing.assert_close(*both())
        layer.double()
        x, agg, z = x.detach().double(), agg.double(), z.double()
        torch.testing.assert_close(*both())


def test_grouped_linear_rejects_bad_groups():
    with pytest.raises(ValueError, match="groups"):
        GroupedLinear(12, 8, 5)


def _graph(M: int = 12, K: int = 3, P: int = 3):
    x = torch.randn(M, 4, requires_grad=True)
    nbr = torch.randint(0, M, (M, K), dtype=torch.int32)
    nbr[:, 0] = torch.arange(M, dtype=torch.int32)  # self loops, as in-partition k-NN gives
    z = torch.randn(P, 4, requires_grad=True)  # one updated centroid per partition
    segment = torch.randint(0, P, (M,))
    degree = torch.full((M,), K)
    return x, nbr, z, segment, degree


@pytest.mark.parametrize("name", sorted(LOCAL_UPDATES))
def test_local_updates_shape_and_gradient(name):
    layer = LOCAL_UPDATES[name](4, 8, groups=2)
    x, nbr, z, segment, degree = _graph()
    out = layer(x, nbr, z, segment, degree)
    assert out.shape == (12, 8)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert z.grad is not None and z.grad.abs().sum() > 0


def _mlp_on_built_input(mlp, h):
    linear, norm, act = mlp
    return act(norm(linear(h)))


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_gmrgcn_input_is_interleaved_x_max_then_centroid(groups):
    """The split weight columns give what the MLP gives on the built input
    [x_0, m_0, x_1, m_1, ... | z'_p(v)], for every grouping (groups that straddle x/m and z)."""
    torch.manual_seed(0)
    layer = GMRGCN(6, 12, groups=groups).train()
    x, nbr, z, segment, degree = _graph(M=10, K=3)
    x = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    layer = layer.double()
    m = x[nbr.long()].max(dim=1).values - x
    h = torch.cat([torch.stack([x, m], dim=2).flatten(1), z[segment]], dim=1)
    expected = _mlp_on_built_input(layer.mlp, h)
    got = layer(x, nbr, z, segment, degree)
    torch.testing.assert_close(got, expected)
    weights = torch.randn_like(got)
    grads = torch.autograd.grad((got * weights).sum(), (x, z, layer.mlp[0].weight))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (x, z, layer.mlp[0].weight))
    for a, b in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["edgeconv", "graphsage"])
@pytest.mark.parametrize("groups", [1, 3])
def test_split_mlps_equal_the_mlp_on_the_built_input(name, groups):
    torch.manual_seed(0)
    layer = LOCAL_UPDATES[name](6, 12, groups=groups).double().train()
    _, nbr, _, segment, degree = _graph(M=10, K=3)
    x = torch.randn(10, 6, dtype=torch.float64)
    z = torch.randn(3, 6, dtype=torch.float64)
    got = layer(x, nbr, z, segment, degree)
    if name == "edgeconv":
        centre = x.unsqueeze(1).expand(-1, 3, -1)
        neighbours = x[nbr.long()]
        edges = torch.cat(
            [centre, neighbours - centre, z[segment].unsqueeze(1).expand_as(centre)], -1
        )
        expected = _mlp_on_built_input(layer.mlp, edges.reshape(30, -1)).reshape(10, 3, -1)
        expected = expected.amax(dim=1)
    else:
        pooled = layer.phi(x)[nbr.long()].amax(dim=1)
        expected = _mlp_on_built_input(layer.psi, torch.cat([x, pooled, z[segment]], 1))
    torch.testing.assert_close(got, expected)


def test_ggin_sums_distinct_neighbours_only():
    layer = GGIN(2, 4).eval()
    x = torch.randn(3, 2)
    z = torch.randn(2, 2)
    segment = torch.tensor([0, 0, 1])
    # A 2-node partition {0, 1} with K = 4: slots repeat members cyclically, degree 2.
    nbr = torch.tensor([[0, 1, 0, 1], [1, 0, 1, 0], [2, 2, 2, 2]], dtype=torch.int32)
    degree = torch.tensor([2, 2, 1])
    expected_sum = torch.stack([x[0] + x[1], x[1] + x[0], x[2]])
    expected = _mlp_on_built_input(layer.mlp, x + expected_sum + z[segment])
    torch.testing.assert_close(layer(x, nbr, z, segment, degree), expected)


@pytest.mark.parametrize("img,grid,strides", [(224, 14, 4), (224, 28, 3), (64, 16, 2)])
def test_cvig_stem_reduces_to_the_grid(img, grid, strides):
    stem = CViGStem(96, img, grid)
    assert stem.num_halvings == strides
    assert stem(torch.randn(1, 3, img, img)).shape == (1, 96, grid, grid)


def test_cvig_stem_rejects_a_grid_it_cannot_reach():
    with pytest.raises(ValueError, match="power of two"):
        CViGStem(96, 224, 15)


def test_the_moved_graph_layers_are_still_importable_from_layers():
    from clustervig import graph_updates, grouped_linear

    for name in ("GATv2GlobalUpdate", "GMRGCN", "GEdgeConv", "GGraphSAGE", "GGIN"):
        assert getattr(layers, name) is getattr(graph_updates, name), name
    assert layers.LOCAL_UPDATES is graph_updates.LOCAL_UPDATES
    assert layers.GroupedLinear is grouped_linear.GroupedLinear
