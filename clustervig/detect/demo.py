"""``python -m clustervig.detect.demo OUT``: a small COCO-format detection set from real scans.

scikit-learn ships real handwritten digit scans (1,797 of 8x8 px, :mod:`clustervig.demo_data`)
and two real photographs (``china.jpg``, ``flower.jpg``). Each demo image is a random crop of a
photograph with one to three digits written onto it (scaled 3-5x, in a colour that stands out
from the crop); every digit's mask is its strokes (scan intensity above a threshold) and its
box the strokes' extent. Nothing is downloaded. Written as ``OUT/train/*.png``,
``OUT/val/*.png`` and ``OUT/annotations/instances_{train,val}.json`` (COCO instances with RLE
segmentations, categories ``"0".."9"``), ready for ``python -m clustervig.detect.train --data
OUT``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import __version__
from ..cli import environment_error, user_error

__all__ = ["write_demo"]


def _render(rng, photos, digits, size: int, max_digits: int):
    """One image ``(size, size, 3)`` uint8 and its instances ``[(digit, mask (size, size))]``."""
    import numpy as np
    from PIL import Image

    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    crop = int(rng.integers(size, min(h, w) + 1))
    y0, x0 = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
    patch = Image.fromarray(photo[y0 : y0 + crop, x0 : x0 + crop]).resize((size, size))
    canvas = np.asarray(patch, dtype=np.float32).copy()
    taken = np.zeros((size, size), dtype=bool)
    instances = []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        index = int(rng.integers(len(digits.images)))
        scale = int(rng.integers(3, 6))
        side = 8 * scale
        strokes = np.kron(digits.images[index] / 16.0, np.ones((scale, scale)))
        for _attempt in range(10):
            y, x = int(rng.integers(size - side + 1)), int(rng.integers(size - side + 1))
            if not taken[y : y + side, x : x + side].any():
                break
        else:
            continue  # no free place left
        region = canvas[y : y + side, x : x + side]
        colour = 255.0 - region.mean(axis=(0, 1))  # stands out from what it is written on
        alpha = strokes[..., None]
        canvas[y : y + side, x : x + side] = region * (1 - alpha) + colour * alpha
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[y : y + side, x : x + side] = strokes > 0.35
        if mask.sum() < 4:
            continue
        taken[y : y + side, x : x + side] = True
        instances.append((int(digits.target[index]), mask))
    return canvas.round().clip(0, 255).astype(np.uint8), instances


def write_demo(
    out: str | Path, train: int = 240, val: int = 60, size: int = 128, seed: int = 0
) -> tuple[int, int]:
    """Write the demo set under ``out`` (module docstring): ``train`` and ``val`` images of
    ``size`` px; returns the instance counts ``(train, val)``."""
    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils
    from sklearn.datasets import load_digits, load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    digits = load_digits()
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]
    counts = []
    for split, n in (("train", train), ("val", val)):
        (out / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            pixels, instances = _render(rng, photos, digits, size, max_digits=3)
            name = f"{i:05d}.png"
            Image.fromarray(pixels).save(out / split / name)
            images.append({"id": i + 1, "file_name": name, "height": size, "width": size})
            for digit, mask in instances:
                rle = mask_utils.encode(np.asfortranarray(mask))
                x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
                rle["counts"] = rle["counts"].decode("ascii")
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": digit + 1,
                        "bbox": [x, y, w, h],
                        "area": float(mask_utils.area(rle)),
                        "segmentation": rle,
                        "iscrowd": 0,
                    }
                )
        doc = {"images": images, "annotations": annotations, "categories": categories}
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
        counts.append(len(annotations))
    return counts[0], counts[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clustervig.detect.demo", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("out", help="directory to write (train/, val/, annotations/)")
    parser.add_argument("--train", type=int, default=240, help="training images (default 240)")
    parser.add_argument("--val", type=int, default=60, help="held-out images (default 60)")
    parser.add_argument("--size", type=int, default=128, help="image side in px (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", action="version", version=f"clustervig {__version__}")
    args = parser.parse_args(argv)
    for flag, value, low in (
        ("--train", args.train, 1),
        ("--val", args.val, 1),
        ("--size", args.size, 64),
    ):
        if value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    if (code := environment_error("python -m clustervig.detect.demo")) is not None:
        return code
    try:
        train, val = write_demo(args.out, args.train, args.val, args.size, args.seed)
    except OSError as err:
        return user_error(
            "python -m clustervig.detect.demo",
            f"cannot write to {args.out} ({err.strerror or err})",
        )
    print(f"wrote {args.train} + {args.val} images ({train} + {val} digits) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
