"""Building blocks of ClusterViG (paper Sec. IV, Fig. 4) and of the ViG baselines.

Stem, position conv (CPE), fc layers (:class:`ConvBN`), FFN, head and stochastic depth follow the
paper and the authors' code as ``shared/REFERENCE.md`` describes it, with the input checks
(:func:`check_images`) and the position embedding every model shares. The graph updates of DEGC
live in :mod:`clustervig.graph_updates` (GATv2 and the G-GCNs of paper Table II) and their grouped
linear layer in :mod:`clustervig.grouped_linear`; their names are importable from here as well.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from kernels import one_cpu_thread

from .fused import ConvAct
from .graph_updates import (
    GGIN,
    GMRGCN,
    LOCAL_UPDATES,
    GATv2GlobalUpdate,
    GEdgeConv,
    GGraphSAGE,
)
from .grouped_linear import GroupedLinear

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
    "add_residual",
    "is_channels_last",
    "layout_of",
    "nodes_to_map",
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


def is_channels_last(x: Tensor) -> bool:
    """Whether a 4-D tensor is laid out channels-last (``(B, H, W, C)`` in memory) and not also
    in the standard layout (as tensors with one channel or one pixel are)."""
    return (
        x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


def layout_of(x: Tensor) -> torch.memory_format:
    """The memory format a block returns for input ``x``: channels-last for a channels-last
    input (the inference form, :func:`clustervig.deploy`), else the standard one. The blocks
    keep their input's layout, so one model runs in either."""
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


# A leaf under torch.fx symbolic tracing (timm / torchvision feature extraction): it reads the
# strides of its input.
torch.fx.wrap("layout_of")


def nodes_to_map(rows: Tensor, B: int, H: int, W: int) -> Tensor:
    """Node rows ``(B * H * W, C)`` or ``(B, H * W, C)`` (node n = h * W + w) -> the feature map
    ``(B, C, H, W)`` as a view of the rows: channels-last strides, no copy (the convolution
    that follows reads either layout)."""
    return rows.reshape(B, H, W, rows.shape[-1]).permute(0, 3, 1, 2)


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

    def fuse(self) -> ConvAct:
        """The inference form (timm's ``fuse`` convention, used by :func:`clustervig.deploy`):
        the eval-mode batch norm folded into the convolution's weight and bias, and the GELU
        run with it (:class:`clustervig.fused.ConvAct`). Only for inference: what gets folded
        are the running statistics."""
        conv, norm, *act = self
        if norm.training:
            raise RuntimeError(
                "ConvBN.fuse: the batch norm is in training mode; call model.eval() first (its "
                "running statistics are what gets folded)"
            )
        if act and act[0].approximate != "none":
            raise ValueError("ConvBN.fuse: only the exact (erf) GELU can be fused")
        return ConvAct.from_conv(fuse_conv_bn_eval(conv, norm), gelu=bool(act))


def add_residual(layer: nn.Module, h: Tensor, residual: Tensor) -> Tensor:
    """``residual + layer(h)``, in one op where ``layer`` is an inference-form convolution
    (:class:`clustervig.fused.ConvAct` adds inside the convolution). Eval mode only: stochastic
    depth is the identity there."""
    if isinstance(layer, ConvAct):
        return layer(h, residual=residual)
    return residual + layer(h)


#: Up to this many nodes (B*H*W) a CPU layer made of many small ops runs on one thread: with
#: passive OpenMP waiting every parallel op first pays to wake the pool (kernels.one_cpu_thread).
#: Measured on 2 threads: CViG-Ti's local updates take 0.65x the time at batch 1, 0.9x at batch
#: 2 and 1.1x at batch 4 on one thread; its depthwise CPE about 0.5x at batch 1 (interleaved).
SMALL_BATCH_ROWS = 512


class PositionConv(ConvAct):
    """The conditional position encoding (CPE): a depthwise 7x7 convolution, ``(B, C, H, W)``
    -> same, plus ``residual`` if given (in one op in CPU inference: :class:`ConvAct`). A small
    batch runs on one CPU thread (``SMALL_BATCH_ROWS``)."""

    def __init__(self, channels: int, kernel_size: int = 7):
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        B, _, H, W = x.shape
        with one_cpu_thread(x, B * H * W <= SMALL_BATCH_ROWS):
            return super().forward(x, residual)


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
        # output goes back to the layout of the input (the standard one in training; the
        # inference form of clustervig.deploy keeps channels-last throughout).
        y = self.convs(x.contiguous(memory_format=torch.channels_last))
        return y.contiguous(memory_format=layout_of(x))


class FFN(nn.Module):
    """``Z = Y + fc2(GELU(fc1(Y)))`` with 1x1 conv + BN layers (paper Eq. 6), hidden ``4C``."""

    def __init__(self, channels: int, hidden: int | None = None, drop_path: float = 0.0):
        super().__init__()
        hidden = hidden or 4 * channels
        self.fc1 = ConvBN(channels, hidden, act=True)
        self.fc2 = ConvBN(hidden, channels)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return add_residual(self.fc2, self.fc1(x), x)
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
        """New classifiers for ``num_classes`` (0: none); ``global_pool`` ``"avg"`` or ``""``.
        They take the device, dtype and training mode of the head's projection."""
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
            if global_pool and self.removed:
                raise ValueError(
                    "reset_classifier: the head was removed (prune_intermediate_layers with "
                    "prune_head): pooled features need the unpruned model"
                )
            self.global_pool = global_pool
        if num_classes and self.removed:
            raise ValueError(
                "reset_classifier: the head was removed (prune_intermediate_layers with "
                "prune_head): a classifier needs the unpruned model"
            )
        self.num_classes = num_classes
        if num_classes:
            like = self.prediction[1].weight
            options = {"device": like.device, "dtype": like.dtype}
            self.head = nn.Conv2d(self.hidden, num_classes, 1, **options).train(self.training)
            dist = nn.Conv2d(self.hidden, num_classes, 1, **options).train(self.training)
            self.dist_head = dist if self.distillation else None
        else:
            self.head, self.dist_head = nn.Identity(), None

    @property
    def removed(self) -> bool:
        """Whether :meth:`remove` took the head away."""
        return len(self.prediction) == 0

    def remove(self) -> None:
        """Drop the pooling, the projection and the classifiers: the model returns its unpooled
        features (``prune_intermediate_layers(prune_head=True)``)."""
        self.num_classes, self.global_pool = 0, ""
        self.prediction = nn.Sequential()
        self.head, self.dist_head = nn.Identity(), None

    def reparameterize(self) -> None:
        """The inference form (timm's ``reparameterize`` convention), in place: the eval-mode
        batch norm of the pre-logits projection folded into its convolution, and a distillation
        head merged with the classifier (eval returns their mean: one classifier with the mean
        weights does it; the model then returns one logit tensor in training mode too). A
        removed head (:meth:`remove`) has nothing to fold."""
        if self.removed:
            return
        pool, conv, norm, *rest = self.prediction
        if isinstance(norm, nn.BatchNorm2d):
            if norm.training:
                raise RuntimeError(
                    "ClassifierHead.reparameterize: the batch norm is in training mode; call "
                    "model.eval() first (its running statistics are what gets folded)"
                )
            act, *rest = rest
            fused = ConvAct.from_conv(fuse_conv_bn_eval(conv, norm), gelu=True)
            self.prediction = nn.Sequential(pool, fused, nn.Identity(), nn.Identity(), *rest)
        if self.dist_head is not None and not self.training:
            # Eval returns the mean of the two classifiers: one classifier with the mean weights.
            like = self.head.weight
            merged = nn.Conv2d(
                self.hidden, self.num_classes, 1, device=like.device, dtype=like.dtype
            )
            with torch.no_grad():
                merged.weight.copy_((self.head.weight + self.dist_head.weight) / 2)
                merged.bias.copy_((self.head.bias + self.dist_head.bias) / 2)
            self.head, self.dist_head = merged, None

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
