"""Pyramid ViG (Han et al., NeurIPS 2022): PViG-Ti/S/M/B, the baseline of the paper's Fig. 5."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._config import apply_overrides
from ..layers import FFN, ClassifierHead, ConvBN
from ..model import _init_weights
from .backbone import ViGBaseline
from .graph import ViGGrapher

__all__ = ["PViG", "PViGConfig", "PVIG_VARIANTS"]


@dataclass(frozen=True)
class PViGConfig:
    channels: tuple[int, ...] = (48, 96, 240, 384)
    blocks: tuple[int, ...] = (2, 2, 6, 2)
    k: int = 9
    reductions: tuple[int, ...] = (4, 2, 1, 1)  # keys average-pooled by this much per stage
    img_size: int = 224
    in_channels: int = 3
    num_classes: int = 1000
    drop_path_rate: float = 0.0
    drop_rate: float = 0.0


PVIG_VARIANTS: dict[str, PViGConfig] = {
    "pvig_ti": PViGConfig(channels=(48, 96, 240, 384), blocks=(2, 2, 6, 2)),
    "pvig_s": PViGConfig(channels=(80, 160, 400, 640), blocks=(2, 2, 6, 2)),
    "pvig_m": PViGConfig(channels=(96, 192, 384, 768), blocks=(2, 2, 16, 2)),
    "pvig_b": PViGConfig(channels=(128, 256, 512, 1024), blocks=(2, 2, 18, 2)),
}


class PViGStem(nn.Sequential):
    """``3x3 s2 (C/2) + BN + GELU -> 3x3 s2 (C) + BN + GELU -> 3x3 (C) + BN``: H/4 x W/4."""

    def __init__(self, channels: int, in_channels: int = 3):
        super().__init__(
            ConvBN(in_channels, channels // 2, 3, stride=2, act=True),
            ConvBN(channels // 2, channels, 3, stride=2, act=True),
            ConvBN(channels, channels, 3),
        )


class PViG(ViGBaseline, nn.Module):
    """Pyramid ViG: four stages at 1/4, 1/8, 1/16, 1/32 resolution joined by stride-2 3x3 conv +
    BN; every Grapher uses K = 9, the relative-position bias and keys pooled by 4, 2, 1, 1; the
    dilation of block i (counted over all stages) is ``min(i // 4 + 1, 49 // 9)``."""

    reduction = 32

    def __init__(self, config: PViGConfig | None = None, **overrides):
        super().__init__()
        config = apply_overrides("PViG", config or PViGConfig(), overrides)
        self.config = config
        chans = config.channels
        grid = config.img_size // 4
        self.stem = PViGStem(chans[0], config.in_channels)
        self.pos_embed = nn.Parameter(torch.zeros(1, chans[0], grid, grid))
        total = sum(config.blocks)
        max_dilation = 49 // config.k
        drop = torch.linspace(0, config.drop_path_rate, total, device="cpu").tolist()
        layers: list[nn.Module] = []
        self._stage_ends: list[tuple[int, int, int]] = []
        idx = 0
        for stage, (c, depth) in enumerate(zip(chans, config.blocks, strict=True)):
            if stage > 0:
                layers.append(ConvBN(chans[stage - 1], c, 3, stride=2))
                grid //= 2
            for _ in range(depth):
                grapher = ViGGrapher(
                    c,
                    k=config.k,
                    dilation=min(idx // 4 + 1, max_dilation),
                    reduction=config.reductions[stage],
                    num_nodes=grid * grid,
                    relative_pos=True,
                    drop_path=drop[idx],
                )
                layers.append(nn.Sequential(grapher, FFN(c, 4 * c, drop_path=drop[idx])))
                idx += 1
            self._stage_ends.append((len(layers) - 1, c, 4 * 2**stage))
        self.backbone = nn.Sequential(*layers)
        self.head = ClassifierHead(chans[-1], config.num_classes, drop_rate=config.drop_rate)
        self.validate_inputs = True
        _init_weights(self)

    @property
    def min_nodes(self) -> int:
        """The fewest nodes an input may give: the coarsest graph's k * dilation keys."""
        return self.nodes_needed(self.config)

    @staticmethod
    def nodes_needed(config: PViGConfig) -> int:
        """The fewest nodes an input may give the coarsest graph of ``config``."""
        return config.k * (49 // config.k)

    def all_taps(self) -> list[tuple[int, int, int]]:
        """``(backbone index, channels, reduction)`` at the end of each of the four stages."""
        return list(self._stage_ends)
