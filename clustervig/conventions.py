"""timm's model conventions, shared by ClusterViG and the ViG baselines.

Every model here is ``stem -> (+ pos_embed) -> backbone (a Sequential of blocks) -> head``
(:class:`clustervig.layers.ClassifierHead`); this mixin gives them the API that timm users,
training scripts and detection frameworks expect: ``num_classes`` / ``num_features``,
``forward_features`` (unpooled) / ``forward_head(x, pre_logits)``, ``get_classifier`` /
``reset_classifier``, ``pretrained_cfg``, ``no_weight_decay``, ``group_matcher`` and
``set_grad_checkpointing``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "FeatureInfo",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneConventions",
    "isotropic_taps",
    "pretrained_cfg",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureInfo(list):
    """``feature_info``: a list of ``{"num_chs", "reduction", "module"}`` dicts, one per feature
    map, with timm's accessors (``channels()``, ``reduction()``, ``module_name()``; each takes an
    optional index)."""

    def _get(self, key: str, idx: int | None = None):
        return [f[key] for f in self] if idx is None else self[idx][key]

    def channels(self, idx: int | None = None):
        return self._get("num_chs", idx)

    def reduction(self, idx: int | None = None):
        return self._get("reduction", idx)

    def module_name(self, idx: int | None = None):
        return self._get("module", idx)


def pretrained_cfg(
    num_classes: int, img_size: int, in_channels: int, pool_size: int, first_conv: str
) -> dict:
    """A timm ``pretrained_cfg`` (no weights are downloaded: ``url`` is empty)."""
    return {
        "url": "",
        "num_classes": num_classes,
        "input_size": (in_channels, img_size, img_size),
        "pool_size": (pool_size, pool_size),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "first_conv": first_conv,
        "classifier": "head.head",
        "license": "apache-2.0",
    }


def isotropic_taps(depth: int, channels: int, reduction: int) -> list[tuple[int, int, int]]:
    """Feature taps of an isotropic model whose backbone is ``depth`` (Grapher, FFN) pairs:
    ``(backbone index, channels, reduction)`` after blocks ``depth/4, depth/2, 3 depth/4, depth``
    (rounded)."""
    blocks = sorted({max(1, round((j + 1) * depth / 4)) for j in range(4)})
    return [(2 * b - 1, channels, reduction) for b in blocks]


class BackboneConventions:
    """Mixin for ``nn.Module`` models with ``stem``, ``pos_embed``, ``backbone`` (Sequential),
    ``head`` (ClassifierHead), ``config``, ``_embed(x)`` (checked input -> stem -> + position
    embedding) and ``feature_taps()`` (``(backbone index, channels, reduction)`` per tap)."""

    grad_checkpointing: bool = False
    #: Run the blocks on channels-last feature maps (set by :func:`clustervig.deploy`, the
    #: inference form; every block keeps its input's layout, so one model runs in either).
    channels_last: bool = False
    stem: nn.Module
    backbone: nn.Sequential
    head: nn.Module

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def num_features(self) -> int:
        """Channels of ``forward_features``' output."""
        return self.head.in_channels

    @property
    def head_hidden_size(self) -> int:
        """Width of the pooled features ``forward_head(x, pre_logits=True)`` returns."""
        return self.head.hidden

    @property
    def default_cfg(self) -> dict:
        return self.pretrained_cfg

    # -- classifier ----------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for ``num_classes`` (0: the model returns its pooled features);
        ``global_pool=""`` makes the model return its unpooled features."""
        self.head.reset(num_classes, global_pool)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``(B, C, H, W)`` features -> logits (or the pooled features with ``pre_logits``)."""
        return self.head(x, pre_logits=pre_logits)

    def input_layout(self, x: Tensor) -> Tensor:
        """The checked input in the layout the blocks run in (:attr:`channels_last`)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, num_features, H / r, W / r)``: the unpooled features."""
        return self.run_blocks(self._embed(x))

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return self.forward_head(self.forward_features(x))

    # -- features for dense prediction ---------------------------------------------------------
    def feature_taps(self) -> list[tuple[int, int, int]]:
        """``(backbone index, channels, reduction)`` per feature tap; an isotropic model's (the
        default): after 4 evenly spaced blocks. Pyramid models override it."""
        return isotropic_taps(self.config.depth, self.config.channels, self.reduction)

    @property
    def feature_info(self) -> FeatureInfo:
        """One entry per feature tap: ``num_chs``, ``reduction`` (stride) and ``module``."""
        return FeatureInfo(
            {"num_chs": c, "reduction": r, "module": f"backbone.{i}"}
            for i, c, r in self.feature_taps()
        )

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The feature maps at the taps of ``feature_info`` (``indices``: which taps, an int
        ``n`` for the last n; default all), and the final features unless
        ``intermediates_only`` (which stops after the last tap)."""
        taps = self.feature_taps()
        if indices is None:
            chosen = list(range(len(taps)))
        elif isinstance(indices, int):
            chosen = list(range(len(taps) - indices, len(taps)))
        else:
            chosen = list(indices)
        if not chosen or any(not 0 <= i < len(taps) for i in chosen):
            raise ValueError(
                f"forward_intermediates: argument 'indices' must select among {len(taps)} taps "
                f"(0..{len(taps) - 1}, or a count), got {indices!r}"
            )
        wanted = {taps[i][0]: i for i in chosen}
        last = max(wanted) if intermediates_only else len(self.backbone) - 1
        outputs: dict[int, Tensor] = {}
        x = self._embed(x)
        for j, block in enumerate(self.backbone):
            x = block(x)
            if j in wanted:
                outputs[wanted[j]] = x
            if j == last:
                break
        intermediates = [outputs[i] for i in chosen]
        return intermediates if intermediates_only else (x, intermediates)

    # -- training ------------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """Parameters that take no weight decay besides norms and biases: the position
        embedding."""
        return {"pos_embed"}

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise learning-rate decay (timm's format)."""
        return {"stem": r"^stem|^pos_embed", "blocks": r"^backbone\.(\d+)"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block in the backward pass instead of keeping its activations."""
        self.grad_checkpointing = bool(enable)

    def run_blocks(self, x: Tensor) -> Tensor:
        """The backbone, block by block under checkpointing when enabled and training."""
        if self.grad_checkpointing and self.training:
            for block in self.backbone:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return self.backbone(x)
