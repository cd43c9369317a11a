"""Building blocks of ClusterViG (paper Sec. IV, Fig. 4) and of the ViG baselines.

Stem, Grapher (CPE, fc1, DEGC, fc2), FFN and head follow the paper and the authors' code as
``shared/REFERENCE.md`` describes it; the global update is GATv2 (paper Eq. 2-3) and the local
updates are the four G-GCNs of paper Table II. Node-level layers take rows ``(M, C)``, the nodes of
all partitions of the batch in partition order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels import gatv2_attention, max_aggregate, one_cpu_thread, segment_norm_gelu

__all__ = [
    "ConvBN",
    "PositionConv",
    "CViGStem",
    "FFN",
    "GATv2GlobalUpdate",
    "GroupedLinear",
    "GMRGCN",
    "GEdgeConv",
    "GGraphSAGE",
    "GGIN",
    "LOCAL_UPDATES",
    "ClassifierHead",
    "DropPath",
    "check_images",
    "add_position_embedding",
]


def add_position_embedding(x: Tensor, pos_embed: Tensor) -> Tensor:
    """``x + pos_embed``, the embedding resized bicubically when the grid differs from the one it
    was built for (inputs of another size than ``img_size``)."""
    if pos_embed.shape[2:] != x.shape[2:]:
        pos_embed = F.interpolate(pos_embed, size=x.shape[2:], mode="bicubic", align_corners=False)
    return x + pos_embed


def check_images(
    model: str,
    x: object,
    in_channels: int,
    reduction: int,
    *,
    min_nodes: int = 1,
    needs: str = "",
    check_finite: bool = True,
    like: Tensor | None = None,
) -> None:
    """Validate a batch of images ``(B, in_channels, H, W)`` for a model whose stem and stages
    divide H and W by ``reduction``; raise ``ValueError`` naming the argument ``x``.
    ``min_nodes`` is the fewest nodes the coarsest stage may have, ``needs`` says why. ``like``
    (a parameter of the model) gives the device and dtype ``x`` must have (any float dtype under
    autocast).

    The NaN/Inf check reads the values, so it runs on CPU tensors in eager mode only (not under
    ``torch.compile``, and never on a GPU, where it would stall the host every call and break
    CUDA-graph capture) and only when ``check_finite`` is set. Non-finite values elsewhere
    propagate to the output as in any PyTorch model; the graph ops keep every index valid.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"{model}: argument 'x' must be a 4-D tensor (B, {in_channels}, H, W), got {shape}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{model}: argument 'x' must have {in_channels} channels (B, {in_channels}, H, W), "
            f"got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(
            f"{model}: argument 'x' must be float32, float16 or bfloat16, got {x.dtype}"
        )
    if like is not None:
        if x.device != like.device:
            raise ValueError(
                f"{model}: argument 'x' is on {x.device} but the model is on {like.device}; "
                f"move one of them (x.to({str(like.device)!r}) or model.to({str(x.device)!r}))"
            )
        if x.dtype != like.dtype and not torch.is_autocast_enabled(x.device.type):
            name = str(like.dtype).replace("torch.", "")
            raise ValueError(
                f"{model}: argument 'x' has dtype {str(x.dtype).replace('torch.', '')} but the "
                f"model's parameters are {name}; pass x.to(torch.{name}), convert the model "
                "(model.to(dtype)), or run under torch.autocast"
            )
    h, w = x.shape[2], x.shape[3]
    if h == 0 or w == 0 or h % reduction or w % reduction:
        raise ValueError(
            f"{model}: argument 'x' must have H and W that are positive multiples of "
            f"{reduction} (the stem and stages divide them by {reduction}), got {h}x{w}"
        )
    nodes = (h // reduction) * (w // reduction)
    if nodes < min_nodes:
        side = reduction * math.ceil(math.sqrt(min_nodes))
        raise ValueError(
            f"{model}: argument 'x' of {h}x{w} gives {nodes} nodes at the coarsest stage, fewer "
            f"than the {min_nodes} needed ({needs}); use images of at least {side}x{side}"
        )
    if (
        check_finite
        and x.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not bool(torch.isfinite(x).all())
    ):
        raise ValueError(f"{model}: argument 'x' contains NaN or Inf; images must be finite")


class ConvBN(nn.Sequential):
    """``Conv2d -> BatchNorm2d`` (-> GELU when ``act``), the unit of stems, fc layers and FFNs."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: bool = False,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if act:
            layers.append(nn.GELU())
        super().__init__(*layers)


#: Up to this many nodes (B*H*W) a CPU layer made of many small ops runs on one thread: with
#: passive OpenMP waiting every parallel op first pays to wake the pool (kernels.one_cpu_thread).
#: Measured on 2 threads: CViG-Ti's local updates take 0.65x the time at batch 1, 0.9x at batch
#: 2 and 1.1x at batch 4 on one thread; its depthwise CPE about 0.5x at batch 1 (interleaved).
SMALL_BATCH_ROWS = 512


class PositionConv(nn.Conv2d):
    """The conditional position encoding (CPE): a depthwise 7x7 convolution, ``(B, C, H, W)``
    -> same. A small batch runs on one CPU thread (``SMALL_BATCH_ROWS``)."""

    def __init__(self, channels: int, kernel_size: int = 7):
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        with one_cpu_thread(x, B * H * W <= SMALL_BATCH_ROWS):
            return super().forward(x)


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch of a whole sample with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath: argument 'p' must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class CViGStem(nn.Module):
    """ClusterViG stem (paper Fig. 4b, authors' channel plan).

    Four 3x3 conv + BN + GELU layers with ``max(C // 8, 64), max(C // 4, 64), C // 2, C``
    channels, the first ``log2(img_size / grid)`` of them with stride 2, then a 3x3 conv + BN
    without activation. ``(B, 3, H, W) -> (B, C, H / 2^r, W / 2^r)``.
    """

    def __init__(
        self, out_channels: int, img_size: int = 224, grid: int = 14, in_channels: int = 3
    ):
        super().__init__()
        ratio = img_size // grid if grid > 0 else 0
        if grid < 1 or img_size % grid or ratio & (ratio - 1):
            raise ValueError(
                "CViGStem: img_size / grid must be a power of two, got "
                f"img_size={img_size}, grid={grid}"
            )
        self.num_halvings = ratio.bit_length() - 1
        if self.num_halvings > 4:
            raise ValueError(
                f"CViGStem: at most 4 stride-2 layers (img_size / grid <= 16), got {ratio}"
            )
        c = out_channels
        widths = [max(c // 8, 64), max(c // 4, 64), c // 2, c]
        layers: list[nn.Module] = []
        prev = in_channels
        for i, width in enumerate(widths):
            layers.append(
                ConvBN(prev, width, 3, stride=2 if i < self.num_halvings else 1, act=True)
            )
            prev = width
        layers.append(ConvBN(c, c, 3))
        self.convs = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        # Channels-last activations: the CPU convolutions skip their layout reorders (measured
        # interleaved on 2 threads: 1.25x faster at batch 8, about the same at batch 1); the
        # output goes back to the standard layout the blocks flatten.
        return self.convs(x.contiguous(memory_format=torch.channels_last)).contiguous()


class FFN(nn.Module):
    """``Z = Y + fc2(GELU(fc1(Y)))`` with 1x1 conv + BN layers (paper Eq. 6), hidden ``4C``."""

    def __init__(self, channels: int, hidden: int | None = None, drop_path: float = 0.0):
        super().__init__()
        hidden = hidden or 4 * channels
        self.fc1 = ConvBN(channels, hidden, act=True)
        self.fc2 = ConvBN(hidden, channels)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.fc2(self.fc1(x)))


class ClassifierHead(nn.Module):
    """Average pool -> 1x1 conv to ``hidden`` + BN + GELU -> classifier(s).

    With ``distillation`` a second classifier is trained against a teacher (DeiT style): in
    training mode both logits are returned, in eval mode their mean. ``num_classes=0`` leaves
    the classifiers out (the model returns its ``hidden``-wide pooled features), and
    ``global_pool=""`` the whole head (the model returns its unpooled features), as in timm.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int = 1000,
        hidden: int = 1024,
        distillation: bool = False,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        self.in_channels, self.hidden, self.distillation = channels, hidden, distillation
        self.global_pool = "avg"
        self.prediction = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.GELU(),
            nn.Dropout(drop_rate),
        )
        self.num_classes = 0
        self.head: nn.Module = nn.Identity()
        self.dist_head: nn.Module | None = None
        self.reset(num_classes)

    def reset(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifiers for ``num_classes`` (0: none); ``global_pool`` ``"avg"`` or ``""``."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(
                f"reset_classifier: argument 'num_classes' must be an int >= 0, got {num_classes!r}"
            )
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(
                    "reset_classifier: argument 'global_pool' must be 'avg' or '' (no pooling), "
                    f"got {global_pool!r}"
                )
            self.global_pool = global_pool
        self.num_classes = num_classes
        device = self.prediction[1].weight.device
        if num_classes:
            self.head = nn.Conv2d(self.hidden, num_classes, 1, device=device)
            dist = nn.Conv2d(self.hidden, num_classes, 1, device=device)
            self.dist_head = dist if self.distillation else None
        else:
            self.head, self.dist_head = nn.Identity(), None

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if not self.global_pool:
            return x
        h = self.prediction(x)
        if pre_logits or not self.num_classes:
            return h.flatten(1)
        logits = self.head(h).flatten(1)
        if self.dist_head is None:
            return logits
        dist = self.dist_head(h).flatten(1)
        if self.training:
            return logits, dist
        return (logits + dist) / 2


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
        direct = self.groups > 1 and not torch.is_grad_enabled()
        direct = direct and not torch.compiler.is_compiling()
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
            x = t[:, first:stop]
            if total is None:
                total = F.linear(x, columns) if into is None else torch.mm(x, columns.t(), out=into)
            elif into is None:
                total = torch.addmm(total, x, columns.t())
            else:
                total.addmm_(x, columns.t())
        return total

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
        stamp = (weight.data_ptr(), weight._version, weight.dtype, inference)
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
                return segment_norm_gelu(
                    nodes, table, segment, linear.bias, norm.weight, norm.bias,
                    norm.running_mean, norm.running_var, norm.eps,
                )  # fmt: skip
        return act(norm(linear.forward_parts(node_parts, centroid_parts, segment)))

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
