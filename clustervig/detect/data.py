"""COCO-format detection data: images plus an instances JSON, checked before anything trains.

``CocoInstances(images_dir, annotation_json)`` yields ``(image (3, H, W) float in [0, 1],
target)`` with torchvision's detection targets: ``boxes`` ``(n, 4)`` xyxy pixels, ``labels``
``(n,)`` (COCO category ids mapped to ``1..C``, 0 is the background), ``masks`` ``(n, H, W)``
uint8 (from the polygons or RLE, through pycocotools), ``image_id``. Crowd annotations and
boxes of no area are left out of the targets (the COCO evaluator still sees them).

What is wrong with a data set is reported by :class:`DetectionDataError` naming the file and
the problem: a JSON that does not parse or lacks ``images`` / ``annotations`` /
``categories``, an image listed but missing on disk, no annotations at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["CocoInstances", "DetectionDataError", "collate"]


class DetectionDataError(ValueError):
    """A detection data set that cannot be used, with the file and the reason."""


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise DetectionDataError(f"--data: no annotation file at {path}")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DetectionDataError(f"--data: {path} is not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise DetectionDataError(f"--data: {path} must hold a JSON object (COCO instances)")
    missing = [
        k for k in ("images", "annotations", "categories") if not isinstance(doc.get(k), list)
    ]
    if missing:
        raise DetectionDataError(
            f"--data: {path} is not a COCO instances file: it lacks the list(s) "
            f"{', '.join(missing)} (expected images, annotations and categories)"
        )
    if not doc["annotations"]:
        raise DetectionDataError(f"--data: {path} has no annotations: nothing to learn from")
    if not doc["categories"]:
        raise DetectionDataError(f"--data: {path} has no categories")
    for i, image in enumerate(doc["images"]):
        if not isinstance(image, dict) or not {"id", "file_name"} <= set(image):
            raise DetectionDataError(f"--data: {path}: image entry {i} lacks 'id' / 'file_name'")
    for i, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict) or not {"image_id", "category_id", "bbox"} <= set(ann):
            raise DetectionDataError(
                f"--data: {path}: annotation {i} lacks 'image_id' / 'category_id' / 'bbox'"
            )
    return doc


class CocoInstances(torch.utils.data.Dataset):
    """The images of a COCO instances file (module docstring); ``with_masks`` decodes the
    segmentations (Mask R-CNN needs them)."""

    def __init__(
        self, images_dir: str | Path, annotation_json: str | Path, with_masks: bool = True
    ):
        from pycocotools.coco import COCO

        self.images_dir = Path(images_dir)
        self.annotation_json = Path(annotation_json)
        doc = _load_json(self.annotation_json)
        if not self.images_dir.is_dir():
            raise DetectionDataError(f"--data: no image directory at {self.images_dir}")
        absent = [
            im["file_name"]
            for im in doc["images"]
            if not (self.images_dir / im["file_name"]).is_file()
        ]
        if absent:
            raise DetectionDataError(
                f"--data: {len(absent)} image(s) listed in {self.annotation_json} are missing "
                f"from {self.images_dir}, e.g. {absent[0]}"
            )
        known = {im["id"] for im in doc["images"]}
        strays = [a["image_id"] for a in doc["annotations"] if a["image_id"] not in known]
        if strays:
            raise DetectionDataError(
                f"--data: {self.annotation_json}: annotations refer to image id(s) it does not "
                f"list, e.g. {strays[0]}"
            )
        self.coco = COCO()
        self.coco.dataset = doc
        self.coco.createIndex()
        self.ids = sorted(known)
        self.category_ids = sorted(c["id"] for c in doc["categories"])
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.category_of = {label: cid for cid, label in self.label_of.items()}
        self.with_masks = with_masks

    @property
    def num_classes(self) -> int:
        """Classes plus the background."""
        return len(self.category_ids) + 1

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        import numpy as np
        from PIL import Image

        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        with Image.open(self.images_dir / info["file_name"]) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        height, width = rgb.shape[:2]
        boxes, labels, masks = [], [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            x, y, w, h = ann["bbox"]
            if ann.get("iscrowd", 0) or w <= 0 or h <= 0:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(self.label_of[ann["category_id"]])
            if self.with_masks:
                masks.append(self.coco.annToMask({**ann, "image_id": image_id}))
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": image_id,
        }
        if self.with_masks:
            target["masks"] = (
                torch.from_numpy(np.stack(masks)).to(torch.uint8)
                if masks
                else torch.zeros(0, height, width, dtype=torch.uint8)
            )
        return torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), target


def collate(batch: list) -> tuple[list[Tensor], list[dict]]:
    """Detection batches are lists (images of different sizes)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
