"""Detectors with this project's backbones: torchvision's Mask R-CNN, Faster R-CNN and RetinaNet
over a feature pyramid (the paper's Table V: Mask R-CNN with CViG-S on COCO).

``build_detector("maskrcnn_cvig_s", num_classes=81)`` puts the backbone's ``features_only``
maps (strides 4, 8, 16, 32: :class:`clustervig.features.FeaturePyramid`) under torchvision's
``FeaturePyramidNetwork`` (256 channels, plus a stride-64 level by max pooling, as torchvision's
ResNet-FPN detectors have) and hands that to the torchvision detector, whose transform resizes
and pads the images (``min_size``, ``max_size``; sizes padded to multiples of 32, which every
backbone here reduces).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from ..registry import canonical_name, create_model

__all__ = ["DETECTORS", "DetectionBackbone", "build_detector", "split_name"]

#: Detector kinds and what they predict.
DETECTORS = {
    "maskrcnn": "boxes and instance masks (Mask R-CNN)",
    "fasterrcnn": "boxes (Faster R-CNN)",
    "retinanet": "boxes (RetinaNet, one stage)",
}


def split_name(name: str) -> tuple[str, str]:
    """``"maskrcnn_cvig_s"`` -> ``("maskrcnn", "cvig_s")``, names checked."""
    if isinstance(name, str):
        kind, _, backbone = name.strip().lower().partition("_")
        if kind in DETECTORS and backbone:
            try:
                return kind, canonical_name(backbone)
            except ValueError:
                pass
    raise ValueError(
        f"detector: argument 'model' must be <kind>_<backbone> with kind one of "
        f"{sorted(DETECTORS)} and a backbone of clustervig.list_models() (e.g. maskrcnn_cvig_s), "
        f"got {name!r}"
    )


class DetectionBackbone(nn.Module):
    """``(B, 3, H, W)`` -> ``OrderedDict`` of 256-channel maps ``"0".."3"`` at strides 4..32 and
    ``"pool"`` at stride 64: a ``features_only`` model under torchvision's FPN.
    ``out_channels`` is what torchvision's detectors read."""

    def __init__(
        self,
        backbone: str,
        frozen_norms: bool = False,
        out_channels: int = 256,
        options: dict | None = None,
    ):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.body = create_model(backbone, features_only=True, **(options or {}))
        self.body.model.validate_inputs = False  # the detector's transform made the batch
        channels = [f["num_chs"] for f in self.body.feature_info]
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        self.frozen_norms = frozen_norms
        if frozen_norms:
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    for p in m.parameters():
                        p.requires_grad_(False)

    def train(self, mode: bool = True) -> DetectionBackbone:
        """With ``frozen_norms`` the backbone's batch norms stay in eval mode (their statistics
        and affine parameters frozen, the usual detection fine-tuning recipe)."""
        super().train(mode)
        if self.frozen_norms:
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        maps = self.body(x)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


def build_detector(
    name: str,
    num_classes: int,
    *,
    min_size: int | tuple[int, ...] = 800,
    max_size: int = 1333,
    frozen_norms: bool = False,
    backbone_checkpoint: str | None = None,
    backbone_options: dict | None = None,
) -> nn.Module:
    """A torchvision detector ``<kind>_<backbone>`` (module docstring) for ``num_classes``
    classes including the background (torchvision's convention: COCO's 80 -> 81).

    Args:
        min_size, max_size: the images' resize (a tuple of ``min_size``: one picked at random
            per training batch, multi-scale training as the paper's 1333 x 800 recipe).
        frozen_norms: keep the backbone's batch norms in eval mode, frozen.
        backbone_checkpoint: classification weights for the backbone (any layout
            :func:`clustervig.load_checkpoint` reads; the classifier is not used).
        backbone_options: config overrides of the backbone (``create_model``'s keywords).
    """
    from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    kind, backbone_name = split_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"build_detector: argument 'num_classes' must be an int >= 2 (the classes plus the "
            f"background), got {num_classes!r}"
        )
    backbone = DetectionBackbone(backbone_name, frozen_norms=frozen_norms, options=backbone_options)
    if backbone_checkpoint:
        from ..checkpoint import load_checkpoint

        load_checkpoint(backbone.body.model, backbone_checkpoint, strict=False)
    sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
    options = {"min_size": sizes, "max_size": max_size}
    if kind == "maskrcnn":
        return MaskRCNN(backbone, num_classes=num_classes, **options)
    if kind == "fasterrcnn":
        return FasterRCNN(backbone, num_classes=num_classes, **options)
    # RetinaNet: anchors on the five levels ("0".."3", "pool"), three scales and ratios each.
    anchors = AnchorGenerator(
        tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (32, 64, 128, 256, 512)),
        ((0.5, 1.0, 2.0),) * 5,
    )
    return RetinaNet(backbone, num_classes=num_classes, anchor_generator=anchors, **options)
