"""Detection and instance segmentation with this project's backbones (torchvision's Mask R-CNN,
Faster R-CNN, RetinaNet over a feature pyramid): :func:`build_detector`, COCO-format data
(:mod:`clustervig.detect.data`), training (``python -m clustervig.detect.train``), prediction
(``python -m clustervig.detect.predict``) and a demo set built from real scans
(``python -m clustervig.detect.demo``)."""

from .model import DETECTORS, DetectionBackbone, build_detector, split_name

__all__ = ["DETECTORS", "DetectionBackbone", "build_detector", "split_name"]
