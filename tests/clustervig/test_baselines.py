"""ViG baselines: relative position table, dense dilated k-NN, and the model layouts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clustervig import create_model
from clustervig.baselines import (
    MRConv,
    PViG,
    ViGGrapher,
    dense_dilated_knn,
    relative_position_table,
)


def sincos_embedding(channels: int, grid: int) -> torch.Tensor:
    """MAE's 2-D sin-cos position embedding, (grid^2, channels), float64."""
    quarter = channels // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    parts = []
    for pos in (xs.reshape(-1), ys.reshape(-1)):
        angle = pos[:, None] * omega[None, :]
        parts += [torch.sin(angle), torch.cos(angle)]
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("channels,grid", [(48, 7), (96, 5), (8, 3)])
def test_relative_position_table_is_the_scaled_gram_of_sincos(channels, grid):
    emb = sincos_embedding(channels, grid)
    expected = 2 * emb @ emb.t() / channels
    table = relative_position_table(channels, grid)
    torch.testing.assert_close(table, expected)
    torch.testing.assert_close(table.diagonal(), torch.ones(grid * grid, dtype=torch.float64))


def test_dense_dilated_knn_matches_brute_force():
    x = torch.randn(2, 30, 5)
    y = torch.randn(2, 20, 5)
    bias = 0.1 * torch.randn(1, 30, 20)
    idx = dense_dilated_knn(x, y, k=4, dilation=3, bias=bias)
    xn, yn = F.normalize(x, dim=-1).double(), F.normalize(y, dim=-1).double()
    for b in range(2):
        for i in range(30):
            d = ((xn[b, i] - yn[b]) ** 2).sum(-1) + bias[0, i].double()
            ranked = torch.argsort(d).tolist()
            assert idx[b, i].tolist() == ranked[0:12:3]


def test_mrconv_max_relative_interleaved():
    layer = MRConv(3, 6, groups=1).eval()
    x = torch.randn(1, 3, 2, 2)
    keys = x.flatten(2).transpose(1, 2)
    idx = torch.tensor([[[0, 1], [1, 2], [2, 3], [3, 0]]])
    nodes = keys[0]
    m = torch.stack([nodes[idx[0, v]].max(0).values - nodes[v] for v in range(4)])
    h = torch.stack([nodes, m], dim=-1).reshape(4, 6).t().reshape(1, 6, 2, 2)
    torch.testing.assert_close(layer(x, keys, idx), layer.nn(h))


def test_pvig_layout_matches_the_vig_paper():
    model = PViG()
    graphers = [m for m in model.modules() if isinstance(m, ViGGrapher)]
    assert [g.dilation for g in graphers] == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert [g.reduction for g in graphers] == [4, 4, 2, 2] + [1] * 8
    assert graphers[0].relative_pos.shape == (1, 3136, 196)
    assert graphers[-1].relative_pos.shape == (1, 49, 49)
    # Fixed tables are buffers, not trainable parameters.
    assert not any("relative_pos" in n for n, _ in model.named_parameters())
    b = create_model("pvig_b")
    dil = [g.dilation for g in b.modules() if isinstance(g, ViGGrapher)]
    assert dil == [1, 1, 1, 1] + [2] * 4 + [3] * 4 + [4] * 4 + [5] * 8


def test_ivig_dilation_schedule():
    model = create_model("ivig_s")
    graphers = [m for m in model.modules() if isinstance(m, ViGGrapher)]
    assert [g.dilation for g in graphers] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    assert all(g.relative_pos is None for g in graphers)


@pytest.mark.parametrize("name", ["pvig_ti", "ivig_ti"])
def test_baselines_reject_bad_input(name):
    model = create_model(name).eval()
    with pytest.raises(ValueError, match="'x'"):
        model(torch.randn(1, 3, 100, 100))


def test_pvig_relative_position_is_resized_for_other_sizes():
    model = create_model("pvig_ti").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 256, 256)).shape == (1, 1000)
    assert math.isclose(model.backbone[0][0].relative_pos.shape[1], 3136)
