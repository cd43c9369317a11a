"""Multi-scale features for detection and segmentation: ``features_only`` models.

``create_model(name, features_only=True, out_indices=(0, 1, 2, 3))`` returns a
:class:`FeaturePyramid`: feature maps at strides 4, 8, 16 and 32. Pyramid ViG has them already
(its four stages). The isotropic models (ClusterViG, isotropic ViG) keep one resolution
throughout, so their four feature taps (after evenly spaced blocks) become a simple feature
pyramid as ViTDet builds one for plain ViTs: transposed convolutions up to the finer strides
(halving the channels at each step), max pooling down to the coarser ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from .conventions import FeatureInfo

__all__ = ["FeaturePyramid", "PYRAMID_STRIDES"]

#: The strides of the four levels a detector's FPN expects.
PYRAMID_STRIDES = (4, 8, 16, 32)


def _rescale(channels: int, factor: float) -> tuple[nn.Module, int]:
    """A module taking a map by ``factor`` in stride (0.25: 4x finer, 2: 2x coarser) and the
    channels it outputs."""
    if factor == 1:
        return nn.Identity(), channels
    if factor > 1:
        return nn.MaxPool2d(int(factor)), channels
    layers: list[nn.Module] = []
    for step in range(round(math.log2(1 / factor))):
        if step:
            layers += [nn.BatchNorm2d(channels), nn.GELU()]
        layers.append(nn.ConvTranspose2d(channels, channels // 2, 2, stride=2))
        channels //= 2
    return nn.Sequential(*layers), channels


class FeaturePyramid(nn.Module):
    """Feature maps of ``model`` at strides 4, 8, 16, 32 (those ``out_indices`` picks).

    ``feature_info`` lists ``num_chs`` and ``reduction`` of every returned map, as timm's
    ``features_only`` models do. Any input size the model accepts works.
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        taps = model.feature_info
        out_indices = tuple(out_indices)
        if len(taps) != len(PYRAMID_STRIDES):
            raise ValueError(f"FeaturePyramid: the model has {len(taps)} feature taps, not 4")
        if not out_indices or any(not 0 <= i < len(taps) for i in out_indices):
            raise ValueError(
                f"create_model: argument 'out_indices' must hold levels in 0..{len(taps) - 1}, "
                f"got {out_indices!r}"
            )
        self.model = model
        self.out_indices = out_indices
        necks, info = [], []
        for level, (tap, stride) in enumerate(zip(taps, PYRAMID_STRIDES, strict=True)):
            neck, channels = _rescale(tap["num_chs"], stride / tap["reduction"])
            necks.append(neck)
            info.append({"num_chs": channels, "reduction": stride, "module": f"necks.{level}"})
        self.necks = nn.ModuleList(necks)
        self.feature_info = FeatureInfo(info[i] for i in out_indices)

    @property
    def pretrained_cfg(self) -> dict:
        """The wrapped model's (timm's feature wrappers carry their model's), with a
        ``min_input_size`` that also gives the coarsest level (stride 32) a pixel."""
        cfg = dict(self.model.pretrained_cfg)
        if "min_input_size" in cfg:
            channels, side, _ = cfg["min_input_size"]
            step = self.model.reduction
            side = max(side, -(-max(PYRAMID_STRIDES) // step) * step)
            cfg["min_input_size"] = (channels, side, side)
        return cfg

    @property
    def default_cfg(self) -> dict:
        return self.pretrained_cfg

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = self.model.forward_intermediates(x, self.out_indices, intermediates_only=True)
        return [self.necks[i](m) for i, m in zip(self.out_indices, maps, strict=True)]
