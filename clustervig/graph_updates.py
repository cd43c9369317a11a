"""The graph updates of a DEGC layer: the global update over the centroids and the local
updates over each partition's graph.

The global update is GATv2 over the complete graph of an image's centroids (paper Eq. 2-3,
:class:`GATv2GlobalUpdate`); the local updates are the four G-GCNs of paper Table II
(:class:`GMRGCN`, :class:`GEdgeConv`, :class:`GGraphSAGE`, :class:`GGIN`, by name in
:data:`LOCAL_UPDATES`), each through an update MLP (a grouped linear layer, batch norm over all
nodes, GELU). Node-level layers take rows ``(M, C)``, the nodes of all partitions of the batch.

The layers look their kernel ops (``gatv2_attention``, ``max_aggregate``, ``segment_norm_gelu``)
up in this module when they run, so code that substitutes one (``clustervig.profile`` times
``max_aggregate``) replaces it here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels import gatv2_attention, max_aggregate, segment_norm_gelu

from .fused import cache_stamp
from .grouped_linear import GroupedLinear

__all__ = ["GATv2GlobalUpdate", "GMRGCN", "GEdgeConv", "GGraphSAGE", "GGIN", "LOCAL_UPDATES"]


# --------------------------------------------------------------------------------------------
# Global update: GATv2 over the complete centroid graph (paper Eq. 2-3)
# --------------------------------------------------------------------------------------------
class GATv2GlobalUpdate(nn.Module):
    """One GATv2 layer (1 head) over the complete graph of an image's kappa centroids.

    ``z'_i = sum_j alpha_ij (W_l z_j + b_l) + b``, ``alpha_ij = softmax_j(a . LeakyReLU(W_r z_i +
    b_r + W_l z_j + b_l))``, j over all centroids of the image including i.
    ``(B, kappa, C) -> (B, kappa, C_out)``.
    """

    def __init__(self, channels: int, out_channels: int | None = None, negative_slope: float = 0.2):
        super().__init__()
        out_channels = out_channels or channels
        self.lin_l = nn.Linear(channels, out_channels)
        self.lin_r = nn.Linear(channels, out_channels)
        self.att = nn.Parameter(torch.empty(out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.negative_slope = negative_slope
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # GATv2's usual init: Glorot weights and attention vector, uniform biases, zero output bias.
        for lin in (self.lin_l, self.lin_r):
            nn.init.xavier_uniform_(lin.weight)
            bound = 1.0 / math.sqrt(lin.in_features)
            nn.init.uniform_(lin.bias, -bound, bound)
        bound = math.sqrt(6.0 / (1 + self.att.numel()))
        nn.init.uniform_(self.att, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, z: Tensor) -> Tensor:
        source = self.lin_l(z)  # (B, kappa, C'): messages W_l z_j + b_l
        target = self.lin_r(z)  # (B, kappa, C'): W_r z_i + b_r
        if not torch.is_grad_enabled():  # inference: the attention as one op
            return gatv2_attention(source, target, self.att, self.bias, self.negative_slope)
        pair = F.leaky_relu(target.unsqueeze(2) + source.unsqueeze(1), self.negative_slope)
        score = pair @ self.att  # (B, kappa_i, kappa_j)
        alpha = torch.softmax(score, dim=-1)
        return alpha @ source + self.bias


# --------------------------------------------------------------------------------------------
# Local update: the G-GCNs of paper Table II. Rows are nodes (image order in the model):
#   forward(x (M, C), nbr (M, K) int32 rows of x, z (P, C) updated centroids,
#           segment (M,) int64 partition of every row, degree (M,) = min(K, |partition|))
# The MLP's input is never built: its weight columns are split by what they multiply (the node,
# its aggregate, its centroid), and the centroid part is computed once per centroid.
# --------------------------------------------------------------------------------------------
class _NodeMLP(nn.Sequential):
    """``Linear(groups) -> BatchNorm1d over all nodes -> GELU``: the G-GCN update MLP."""

    def __init__(self, in_features: int, out_features: int, groups: int = 1):
        super().__init__(
            GroupedLinear(in_features, out_features, groups),
            nn.BatchNorm1d(out_features),
            nn.GELU(),
        )

    def forward_parts(self, node_parts, centroid_parts, segment: Tensor) -> Tensor:
        """The MLP on an input described by parts (see :meth:`GroupedLinear.forward_parts`).

        In inference (eval mode, no gradient) the bias, the centroid term, the batch norm and the
        GELU run as one op over the products (:func:`kernels.segment_norm_gelu`): one pass over
        the ``(M, out)`` activations instead of five."""
        linear, norm, act = self
        if self._fused_epilogue():
            nodes, table = linear.project_parts(node_parts, centroid_parts)
            if nodes is not None and table is not None:
                return segment_norm_gelu(nodes, table, segment, self._stacked_norm(), norm.eps)
        return act(norm(linear.forward_parts(node_parts, centroid_parts, segment)))

    def _stacked_norm(self) -> Tensor:
        """``(5, out)``: the linear bias and the batch norm's weight, bias, running mean and
        running variance, the fused epilogue's ``norm`` argument. Stacked again only when one
        of them changed (a tensor's version counter), so inference pays no copy per call."""
        linear, norm, _ = self
        parts = (linear.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var)
        if torch.compiler.is_compiling():  # Inductor fuses the stack into what follows
            return torch.stack(parts)
        key = tuple(cache_stamp(t) for t in parts)
        cached = self.__dict__.get("_norm_cache")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_norm_cache"] = (key, torch.stack([t.detach() for t in parts]))
        return cached[1]

    def _fused_epilogue(self) -> bool:
        _, norm, act = self
        return (
            not self.training
            and not torch.is_grad_enabled()
            and norm.affine
            and norm.running_mean is not None
            and act.approximate == "none"
        )


class GMRGCN(nn.Module):
    """G-MRGCN: ``x'_v = MLP([x_v | max_u (x_u - x_v) | z'_p(v)])``; x and the max interleaved
    channel by channel (the authors' order), so x_c meets MLP input column 2c and the
    aggregate's channel c column 2c + 1."""

    needs_degree = False

    def __init__(self, channels: int, out_channels: int, groups: int = 1):
        super().__init__()
        self.mlp = _NodeMLP(3 * channels, out_channels, groups)

    def forward(self, x: Tensor, nbr: Tensor, z: Tensor, segment: Tensor, degree: Tensor) -> Tensor:
        c = x.shape[1]
        relative_max = max_aggregate(x, nbr, relative=True)
        return self.mlp.forward_parts([(0, 2, x), (1, 2, relative_max)], [(2 * c, 1, z)], segment)


class GEdgeConv(nn.Module):
    """G-EdgeConv: ``x'_v = max_u MLP([x_v | x_u - x_v | z'_p(v)])``, the MLP applied per edge.

    The linear layer is split by its inputs: ``W_x x_v + W_d (x_u - x_v) + W_z z`` is
    ``(W_x - W_d) x_v + W_d x_u + W_z z``, so the products run once per node (and per centroid),
    not once per edge; only BatchNorm, GELU and the max see the ``(M, K, C_out)`` edges.
    """

    needs_degree = False

    def __init__(self, channels: int, out_channels: int, groups: int = 1):
        super().__init__()
        self.mlp = _NodeMLP(3 * channels, out_channels, groups)

    def forward(self, x: Tensor, nbr: Tensor, z: Tensor, segment: Tensor, degree: Tensor) -> Tensor:
        m, k = nbr.shape
        c = x.shape[1]
        linear, norm, act = self.mlp
        centre = linear.forward_parts([(0, 1, x), (c, 1, -x)], [(2 * c, 1, z)], segment)
        neighbour = linear.forward_parts([(c, 1, x)], [], segment, bias=False)
        gathered = neighbour.index_select(0, nbr.reshape(-1).long()).view(m, k, -1)
        edges = centre.unsqueeze(1) + gathered  # (M, K, C_out)
        messages = act(norm(edges.reshape(m * k, -1))).reshape(m, k, -1)
        return messages.amax(dim=1)  # repeated neighbours (small partitions) leave a max unchanged


class GGraphSAGE(nn.Module):
    """G-GraphSAGE: ``x'_v = MLP_psi([x_v | max_u MLP_phi(x_u) | z'_p(v)])``."""

    needs_degree = False

    def __init__(self, channels: int, out_channels: int, groups: int = 1):
        super().__init__()
        self.phi = _NodeMLP(channels, channels)
        self.psi = _NodeMLP(3 * channels, out_channels, groups)

    def forward(self, x: Tensor, nbr: Tensor, z: Tensor, segment: Tensor, degree: Tensor) -> Tensor:
        c = x.shape[1]
        pooled = max_aggregate(self.phi(x), nbr, relative=False)
        return self.psi.forward_parts([(0, 1, x), (c, 1, pooled)], [(2 * c, 1, z)], segment)


class GGIN(nn.Module):
    """G-GIN: ``x'_v = MLP((1 + eps) x_v + sum_u x_u + (1 + delta) z'_p(v))``.

    The sum runs over distinct neighbours: in a partition smaller than K the neighbour list
    repeats members, and only its first ``degree`` slots are counted.
    """

    needs_degree = True

    def __init__(self, channels: int, out_channels: int, groups: int = 1):
        super().__init__()
        self.eps = nn.Parameter(torch.zeros(()))
        self.delta = nn.Parameter(torch.zeros(()))
        self.mlp = _NodeMLP(channels, out_channels, groups)

    def forward(self, x: Tensor, nbr: Tensor, z: Tensor, segment: Tensor, degree: Tensor) -> Tensor:
        k = nbr.shape[1]
        distinct = torch.arange(k, device=x.device) < degree.unsqueeze(1)  # (M, K)
        gathered = x.index_select(0, nbr.reshape(-1).long()).view(*nbr.shape, -1)
        neighbour_sum = (gathered * distinct.unsqueeze(-1).to(x.dtype)).sum(dim=1)
        h = (1 + self.eps) * x + neighbour_sum
        return self.mlp.forward_parts([(0, 1, h)], [(0, 1, (1 + self.delta) * z)], segment)


LOCAL_UPDATES: dict[str, type[nn.Module]] = {
    "mrgcn": GMRGCN,
    "edgeconv": GEdgeConv,
    "graphsage": GGraphSAGE,
    "gin": GGIN,
}
