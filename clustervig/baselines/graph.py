"""ViG's graph layer (Han et al., NeurIPS 2022): dense dilated k-NN over all nodes + MRConv.

This is the layer every ClusterViG speedup is measured against, so it follows the ViG authors'
construction (``shared/REFERENCE.md`` section 2.1): k-NN on L2-normalised features over *all*
nodes of the image (keys average-pooled by ``reduction`` in the pyramid model), every
``dilation``-th of the ``k * dilation`` nearest kept, an optional relative-position term added to
the distance, then max-relative aggregation and a grouped 1x1 conv.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import ConvBN, DropPath, add_residual, nodes_to_map

__all__ = ["relative_position_table", "dense_dilated_knn", "MRConv", "ViGGrapher"]


def relative_position_table(channels: int, grid: int) -> Tensor:
    """ViG's relative-position similarity of a ``grid x grid`` layout, ``(grid^2, grid^2)``.

    ``R = (2 / C) * E E^T`` with E the 2-D sin-cos position embedding (``[sin(x w), cos(x w),
    sin(y w), cos(y w)]``, ``w_t = 10000^(-t / (C / 4))``, t < C/4), i.e.
    ``R[i, j] = (2 / C) * sum_t [cos(w_t dx_ij) + cos(w_t dy_ij)]``: 1 on the diagonal, smaller
    for distant nodes. Computed in float64 on the CPU.
    """
    if channels % 4:
        raise ValueError(
            f"relative_position_table: 'channels' must be a multiple of 4, got {channels}"
        )
    quarter = channels // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64, device="cpu") / quarter)
    coords = torch.arange(grid, dtype=torch.float64, device="cpu")
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    parts = []
    for pos in (xs.reshape(-1), ys.reshape(-1)):
        angle = pos[:, None] * omega[None, :]
        parts += [torch.sin(angle), torch.cos(angle)]
    embedding = torch.cat(parts, dim=1)  # (grid^2, C)
    return (2.0 / channels) * embedding @ embedding.t()


def relative_position_bias(channels: int, num_nodes: int, reduction: int) -> Tensor:
    """Distance bias ``(1, N, N / r^2)``: the negated table, its key axis resized bicubically.

    The table of the ``sqrt(N)`` grid is treated as a one-channel ``N x N`` image and resized to
    ``N x (N / r^2)`` (as the ViG authors do), so that close nodes get a smaller distance.
    """
    grid = math.isqrt(num_nodes)
    table = relative_position_table(channels, grid).float()[None, None]
    table = F.interpolate(
        table,
        size=(num_nodes, num_nodes // (reduction * reduction)),
        mode="bicubic",
        align_corners=False,
    )
    return -table.squeeze(1)


@torch.no_grad()
def dense_dilated_knn(
    x: Tensor, y: Tensor, k: int, dilation: int = 1, bias: Tensor | None = None
) -> Tensor:
    """Dilated k-NN of every node of ``x (B, N, C)`` among all keys ``y (B, M, C)``.

    Distances are squared Euclidean between L2-normalised features (plus ``bias (1, N, M)``);
    of the ``k * dilation`` nearest keys every ``dilation``-th is kept. Returns ``(B, N, k)``
    int64 key indices, nearest first.
    """
    if k * dilation > y.shape[1]:
        raise ValueError(
            f"dense_dilated_knn: k * dilation = {k * dilation} exceeds the {y.shape[1]} keys"
        )
    x = F.normalize(x, dim=-1)
    y = F.normalize(y, dim=-1)
    dist = (
        (x * x).sum(-1, keepdim=True)
        - 2.0 * torch.matmul(x, y.transpose(1, 2))
        + (y * y).sum(-1).unsqueeze(1)
    )
    if bias is not None:
        dist = dist + bias
    idx = torch.topk(-dist, k * dilation, dim=-1).indices
    return idx[..., ::dilation]


class MRConv(nn.Module):
    """Max-relative graph conv: ``GELU(BN(Conv1x1_g([x_v, max_u (y_u - x_v)] interleaved)))``."""

    def __init__(self, channels: int, out_channels: int, groups: int = 4):
        super().__init__()
        self.nn = ConvBN(2 * channels, out_channels, groups=groups, act=True)

    def forward(self, x: Tensor, keys: Tensor, idx: Tensor) -> Tensor:
        """x ``(B, C, H, W)``, keys ``(B, M, C)``, idx ``(B, N, k)`` -> ``(B, C_out, H, W)``."""
        B, C, H, W = x.shape
        nodes = x.flatten(2).transpose(1, 2)  # (B, N, C)
        flat = keys.reshape(-1, C)
        offset = torch.arange(B, device=x.device).view(B, 1, 1) * keys.shape[1]
        neighbours = flat[idx + offset]  # (B, N, k, C)
        relative = neighbours.amax(dim=2) - nodes  # = max_u (y_u - x_v)
        h = torch.stack([nodes, relative], dim=-1).reshape(B, H * W, 2 * C)
        return self.nn(nodes_to_map(h, B, H, W))


class ViGGrapher(nn.Module):
    """ViG Grapher: ``X + fc2(MRConv(fc1(X), dense dilated k-NN graph))`` (no CPE).

    Args:
        channels: C.
        k, dilation: neighbours kept and the dilation of the k-NN.
        reduction: keys are ``avg_pool2d(fc1(X), reduction)`` (1 = all nodes).
        num_nodes: N the relative-position bias is built for (resized for other sizes).
        relative_pos: add ViG's relative-position bias to the distance.
    """

    def __init__(
        self,
        channels: int,
        k: int = 9,
        dilation: int = 1,
        reduction: int = 1,
        num_nodes: int = 196,
        relative_pos: bool = False,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.k, self.dilation, self.reduction, self.num_nodes = k, dilation, reduction, num_nodes
        self.fc1 = ConvBN(channels, channels)
        self.graph_conv = MRConv(channels, 2 * channels, groups=4)
        self.fc2 = ConvBN(2 * channels, channels)
        self.drop_path = DropPath(drop_path)
        bias = relative_position_bias(channels, num_nodes, reduction) if relative_pos else None
        # A fixed table, not a parameter: it is never trained.
        self.register_buffer("relative_pos", bias, persistent=relative_pos)

    def _bias(self, h: int, w: int) -> Tensor | None:
        if self.relative_pos is None or h * w == self.num_nodes:
            return self.relative_pos
        n = h * w
        keys = (h // self.reduction) * (w // self.reduction)
        return F.interpolate(
            self.relative_pos.unsqueeze(0), size=(n, keys), mode="bicubic", align_corners=False
        ).squeeze(0)

    def forward(self, x: Tensor) -> Tensor:
        y = self.fc1(x)
        keys, idx = self.neighbours(y)
        if not self.training:
            return add_residual(self.fc2, self.graph_conv(y, keys, idx), x)
        return x + self.drop_path(self.fc2(self.graph_conv(y, keys, idx)))

    def neighbours(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """The graph of ``y = fc1(x)`` ``(B, C, H, W)``: keys ``(B, M, C)`` (pooled by the
        reduction ratio) and every node's ``(B, N, k)`` dilated nearest keys."""
        H, W = y.shape[2:]
        keys = F.avg_pool2d(y, self.reduction, self.reduction) if self.reduction > 1 else y
        keys = keys.flatten(2).transpose(1, 2)  # (B, M, C)
        idx = dense_dilated_knn(
            y.flatten(2).transpose(1, 2), keys, self.k, self.dilation, self._bias(H, W)
        )
        return keys, idx

    def extra_repr(self) -> str:
        return f"k={self.k}, dilation={self.dilation}, reduction={self.reduction}"
