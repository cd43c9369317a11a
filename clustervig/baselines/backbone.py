"""What the two ViG baselines (isotropic and Pyramid ViG) share on top of the timm conventions:
the checked input through the stem plus the position embedding, and timm's ``pretrained_cfg``."""

from __future__ import annotations

import torch
from torch import Tensor

from ..conventions import BackboneConventions, min_input_side, pretrained_cfg
from ..layers import add_position_embedding, check_images

__all__ = ["ViGBaseline"]

# Leaves under torch.fx symbolic tracing (timm / torchvision feature extraction): both read
# shapes and values in Python.
torch.fx.wrap("check_images")
torch.fx.wrap("add_position_embedding")


class ViGBaseline(BackboneConventions):
    """Mixin of :class:`~clustervig.baselines.IViG` and :class:`~clustervig.baselines.PViG`
    (``nn.Module`` models with what :class:`BackboneConventions` needs, whose stem's first conv
    is ``stem.0.0``), given ``reduction`` (the input size over the coarsest grid's) and
    ``min_nodes`` (the fewest nodes the coarsest graph needs: its k * dilation keys)."""

    reduction: int
    min_nodes: int

    def _embed(self, x: Tensor) -> Tensor:
        """Checked input -> stem -> + position embedding: the backbone's input."""
        check_images(
            type(self).__name__,
            x,
            self.config.in_channels,
            self.reduction,
            min_nodes=self.min_nodes,
            needs="k * dilation",
            check_finite=self.validate_inputs,
            like=self.pos_embed,
        )
        return add_position_embedding(self.stem(self.input_layout(x)), self.pos_embed)

    @classmethod
    def smallest_input_side(cls, config) -> int:
        """The smallest square input ``config``'s graphs take: ``nodes_needed(config)`` nodes at
        the coarsest stage."""
        return min_input_side(cls.reduction, cls.nodes_needed(config))

    @property
    def pretrained_cfg(self) -> dict:
        c = self.config
        size = c.img_size // self.reduction
        side = self.smallest_input_side(c)
        return self._with_architecture(
            pretrained_cfg(self.num_classes, c.img_size, c.in_channels, size, "stem.0.0", side)
        )
