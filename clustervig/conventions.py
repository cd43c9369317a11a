"""timm's model conventions, shared by ClusterViG and the ViG baselines.

Every model here is ``stem -> (+ pos_embed) -> backbone (a Sequential of blocks) -> head``
(:class:`clustervig.layers.ClassifierHead`); this mixin gives them the API that timm users,
training scripts and detection frameworks expect: ``num_classes`` / ``num_features``,
``forward_features`` (unpooled) / ``forward_head(x, pre_logits)``, ``get_classifier`` /
``reset_classifier``, ``pretrained_cfg``, ``no_weight_decay``, ``group_matcher`` and
``set_grad_checkpointing``.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "BackboneConventions", "pretrained_cfg"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


class BackboneConventions:
    """Mixin for ``nn.Module`` models with ``stem``, ``pos_embed``, ``backbone`` (Sequential),
    ``head`` (ClassifierHead), ``config`` and a ``_check_input(x)`` method."""

    grad_checkpointing: bool = False
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

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return self.forward_head(self.forward_features(x))

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
