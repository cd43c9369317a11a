"""The grouped linear layer of the G-GCN update MLPs (paper Table II, ``groups`` of CViG-B†).

:class:`GroupedLinear` is a linear layer on rows ``(M, in) -> (M, out)`` whose channels are split
into independent groups (a 1x1 grouped convolution). Its ``forward_parts`` applies it to an input
that is never materialised: the local updates of :mod:`clustervig.graph_updates` describe the
MLP input of every node by parts (the node, its aggregate, its centroid) and each part meets only
its own weight columns, a centroid part once per centroid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fused import cache_stamp, can_multiply_rows, multiply_rows

__all__ = ["GroupedLinear"]


class GroupedLinear(nn.Module):
    """Linear layer whose input and output channels are split into ``groups`` independent blocks
    (a 1x1 grouped convolution on rows). ``(M, in) -> (M, out)``."""

    def __init__(self, in_features: int, out_features: int, groups: int = 1):
        super().__init__()
        if groups < 1 or in_features % groups or out_features % groups:
            raise ValueError(
                f"GroupedLinear: 'groups' must divide in_features={in_features} and "
                f"out_features={out_features}, got {groups}"
            )
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        fan_in = in_features // groups
        self.weight = nn.Parameter(torch.empty(groups, out_features // groups, fan_in))
        self.bias = nn.Parameter(torch.empty(out_features))
        # nn.Linear's default init, per group.
        nn.init.kaiming_uniform_(self.weight.view(-1, fan_in), a=math.sqrt(5))
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.bias, -bound, bound)
        # Contiguous copies of weight column selections, for inference (see _columns).
        self._column_cache: dict[tuple, tuple[tuple, Tensor]] = {}

    def forward(self, x: Tensor) -> Tensor:
        if self.groups == 1:
            return F.linear(x, self.weight[0], self.bias)
        m = x.shape[0]
        xg = x.reshape(m, self.groups, -1).transpose(0, 1)  # (G, M, in/G)
        out = torch.bmm(xg, self.weight.transpose(1, 2))  # (G, M, out/G)
        return out.transpose(0, 1).reshape(m, self.out_features) + self.bias

    def forward_parts(
        self,
        node_parts: list[tuple[int, int, Tensor]],
        centroid_parts: list[tuple[int, int, Tensor]],
        segment: Tensor,
        bias: bool = True,
    ) -> Tensor:
        """This layer applied to an input that is never materialised.

        The input row of node v is described by parts ``(start, step, t)``: input channel
        ``start + step * i`` is ``t[v, i]`` for node parts (``(M, L)`` tensors) and
        ``t[segment[v], i]`` for centroid parts (``(P, L)``, one row per partition). Each part is
        multiplied by its own weight columns, group by group (the same products as
        :meth:`forward`, without the interleave, the concatenation or the ``z[segment]``
        gather), and a centroid part once per centroid. Returns ``(M, out)``, plus the bias
        unless ``bias=False``; input channels no part covers count as zeros.
        """
        out, centroids = self.project_parts(node_parts, centroid_parts)
        if out is None:
            out = self.weight.new_zeros(segment.shape[0], self.out_features)
        if bias:
            out = out + self.bias
        if centroids is not None:
            out = out + centroids[segment]
        return out

    def project_parts(
        self,
        node_parts: list[tuple[int, int, Tensor]],
        centroid_parts: list[tuple[int, int, Tensor]],
    ) -> tuple[Tensor | None, Tensor | None]:
        """The products of :meth:`forward_parts` before they are combined: ``(M, out)`` of the
        node parts and ``(P, out)`` of the centroid parts (None where there are no parts), no
        bias."""
        fan_in, fan_out = self.in_features // self.groups, self.out_features // self.groups
        # Without autograd (and outside torch.compile, which fuses a concatenation itself) each
        # group's products write into their columns of one output: no per-group outputs and no
        # concatenation (CViG-B†, 4 groups: 6.3 ms of copies a forward at batch 256 on an H100,
        # estimated). With autograd the products stay separate tensors (out= has no gradient).
        # Not while tracing (ONNX export) either: a trace does not follow writes into views.
        direct = self.groups > 1 and not torch.is_grad_enabled()
        direct = direct and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
        # out= runs outside autocast: only where the products run in the weight's dtype anyway
        tensors = [t for _, _, t in (*node_parts, *centroid_parts)]
        direct = direct and all(t.dtype == self.weight.dtype for t in tensors)
        kind = self.weight.device.type  # meta (static reports) has no autocast
        direct = direct and not (
            torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind)
        )
        projected = []
        for parts in (node_parts, centroid_parts):
            if direct:
                projected.append(self._project_into_columns(parts, fan_in, fan_out))
                continue
            per_group = [
                self._project(g, g * fan_in, (g + 1) * fan_in, parts) for g in range(self.groups)
            ]
            projected.append(_assemble(per_group, fan_out))
        return projected[0], projected[1]

    def _project_into_columns(self, parts, fan_in: int, fan_out: int) -> Tensor | None:
        """The products of every group written into their output columns of one ``(rows,
        out)`` tensor (a group no part reaches: zeros), or None if no part reaches any."""
        if not parts:
            return None
        first = parts[0][2]
        out = first.new_empty(first.shape[0], self.out_features)
        reached = False
        for g in range(self.groups):
            columns = out[:, g * fan_out : (g + 1) * fan_out]
            if self._project(g, g * fan_in, (g + 1) * fan_in, parts, into=columns) is None:
                columns.zero_()
            else:
                reached = True
        return out if reached else None

    def _project(
        self, g: int, lo: int, hi: int, parts, into: Tensor | None = None
    ) -> Tensor | None:
        """Sum over ``parts`` of ``t[:, i0:i1] @ W_g[:, columns]^T`` for the input channels that
        fall in ``[lo, hi)`` (group g's columns), or None if none do: one product per part,
        each accumulating into the last (``addmm``); written into ``into`` if given."""
        total = None
        for start, step, t in parts:
            first = max(0, -(-(lo - start) // step))  # ceil((lo - start) / step)
            stop = min(t.shape[1], -(-(hi - start) // step))
            if first >= stop:
                continue
            columns = self._columns(g, start + step * first - lo, step, stop - first)
            # The whole tensor when the group takes all its columns: a view in PyTorch, but a
            # Slice (a copy) in an exported graph.
            x = t if first == 0 and stop == t.shape[1] else t[:, first:stop]
            if into is None and can_multiply_rows(x, columns):
                # CPU float32 inference: oneDNN's packed product, the previous part's product
                # added inside it (clustervig.fused.multiply_rows).
                cache = self.__dict__.setdefault("_packed_columns", {})
                total = multiply_rows(x, columns, cache, add=total)
                continue
            if total is None:
                total = F.linear(x, columns) if into is None else torch.mm(x, columns.t(), out=into)
            elif into is None:
                total = torch.addmm(total, x, columns.t())
            else:
                total.addmm_(x, columns.t())
        return total

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_packed_columns", None)  # oneDNN-layout copies: rebuilt, never copied or saved
        return state

    def _columns(self, g: int, first: int, step: int, count: int) -> Tensor:
        """Columns ``first, first + step, ...`` (``count`` of them) of group g's weight,
        contiguous. Without autograd they are cached while the weight is unchanged (same
        storage, version and dtype, and built in the same inference mode: an inference-mode
        copy may not be saved for a backward): a strided selection is copied by every product
        that uses it (on the CPU, 0.08 ms for CViG-Ti's beside a 0.57 ms product)."""
        columns = self.weight[g, :, first : first + step * (count - 1) + 1 : step]
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return columns
        weight = self.weight
        inference = torch.is_inference_mode_enabled()
        stamp = (*cache_stamp(weight), inference)
        key = (g, first, step, count)
        cached = self._column_cache.get(key)
        if cached is None or cached[0] != stamp:
            cached = (stamp, columns.contiguous())
            self._column_cache[key] = cached
        return cached[1]

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, groups={self.groups}"


def _assemble(per_group: list[Tensor | None], fan_out: int) -> Tensor | None:
    """Per-group outputs side by side (zeros for a group no part reached), or None."""
    present = [p for p in per_group if p is not None]
    if not present:
        return None
    rows = present[0].shape[0]
    blocks = [p if p is not None else present[0].new_zeros(rows, fan_out) for p in per_group]
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
