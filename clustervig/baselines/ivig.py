"""Isotropic ViG (Han et al., NeurIPS 2022): ViG-Ti/S/B at 14x14 nodes with dense dilated k-NN."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._config import apply_overrides
from ..layers import FFN, ClassifierHead, ConvBN
from ..model import _init_weights, neighbour_schedule
from .backbone import ViGBaseline
from .graph import ViGGrapher

__all__ = ["IViG", "IViGConfig", "IVIG_VARIANTS"]


@dataclass(frozen=True)
class IViGConfig:
    channels: int = 192
    depth: int = 12
    k_min: int = 9
    k_max: int = 18
    img_size: int = 224
    in_channels: int = 3
    num_classes: int = 1000
    drop_path_rate: float = 0.0
    drop_rate: float = 0.0


IVIG_VARIANTS: dict[str, IViGConfig] = {
    "ivig_ti": IViGConfig(channels=192, depth=12),
    "ivig_s": IViGConfig(channels=320, depth=16),
    "ivig_b": IViGConfig(channels=640, depth=16),
}


class ViGStem(nn.Sequential):
    """ViG's isotropic stem: four stride-2 3x3 conv + BN + GELU (C/8, C/4, C/2, C), then a
    3x3 conv + BN. ``(B, 3, H, W) -> (B, C, H/16, W/16)``."""

    def __init__(self, channels: int, in_channels: int = 3):
        widths = [channels // 8, channels // 4, channels // 2, channels]
        layers: list[nn.Module] = []
        prev = in_channels
        for width in widths:
            layers.append(ConvBN(prev, width, 3, stride=2, act=True))
            prev = width
        layers.append(ConvBN(channels, channels, 3))
        super().__init__(*layers)


class IViG(ViGBaseline, nn.Module):
    """Isotropic ViG: 14x14 nodes, k-NN over all 196 nodes with dilation ``min(i // 4 + 1,
    196 // max K)``, K = ``int(linspace(9, 18, depth))``; ``(B, 3, H, W) -> (B, classes)``."""

    reduction = 16

    @classmethod
    def graph_plan(cls, config: IViGConfig) -> list[tuple[int, int]]:
        """``(K, dilation)`` of every block: K from ``neighbour_schedule``, dilation
        ``min(i // 4 + 1, N // max K)`` with N the nodes of the configured size."""
        num_nodes = (config.img_size // cls.reduction) ** 2
        ks = neighbour_schedule(config.depth, config.k_min, config.k_max)
        max_dilation = num_nodes // max(ks)
        return [(k, min(i // 4 + 1, max_dilation)) for i, k in enumerate(ks)]

    @classmethod
    def nodes_needed(cls, config: IViGConfig) -> int:
        """The fewest nodes an input may give the graphs of ``config``: the largest
        ``k * dilation`` of its blocks."""
        return max(k * dilation for k, dilation in cls.graph_plan(config))

    def __init__(self, config: IViGConfig | None = None, **overrides):
        super().__init__()
        config = apply_overrides("IViG", config or IViGConfig(), overrides)
        self.config = config
        c = config.channels
        grid = config.img_size // self.reduction
        num_nodes = grid * grid
        self.stem = ViGStem(c, config.in_channels)
        self.pos_embed = nn.Parameter(torch.zeros(1, c, grid, grid))
        drop = torch.linspace(0, config.drop_path_rate, config.depth, device="cpu").tolist()
        blocks: list[nn.Module] = []
        for i, (k, dilation) in enumerate(self.graph_plan(config)):
            blocks.append(ViGGrapher(c, k, dilation, 1, num_nodes, False, drop[i]))
            blocks.append(FFN(c, 4 * c, drop_path=drop[i]))
        self.backbone = nn.Sequential(*blocks)
        # The coarsest graph needs k * dilation keys: the fewest nodes an input may give.
        self.min_nodes = self.nodes_needed(config)
        self.head = ClassifierHead(c, config.num_classes, drop_rate=config.drop_rate)
        self.validate_inputs = True
        _init_weights(self)
