"""``python -m clustervig.detect.predict IMAGE --checkpoint CKPT --out pred.png``: a trained
detector's boxes (and masks) drawn over an image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .. import __version__
from ..cli import environment_error, user_error

__all__ = ["load_detector", "main", "predict"]


def load_detector(path: str):
    """The detector of a ``python -m clustervig.detect.train`` checkpoint, eval mode, and its
    class names."""
    from ..run_files import read_checkpoint_blob
    from .model import build_detector

    if not Path(path).is_file():
        raise ValueError(f"--checkpoint: no checkpoint file at {path!r}")
    blob = read_checkpoint_blob(path, "--checkpoint")
    if not isinstance(blob, dict) or blob.get("kind") != "detector":
        raise ValueError(
            f"--checkpoint: {path} is not a checkpoint of python -m clustervig.detect.train"
        )
    from .._config import parse_override

    args = blob["args"]
    model = build_detector(
        args["model"],
        len(blob["classes"]) + 1,
        min_size=args["eval_size"],
        max_size=args["max_size"],
        backbone_options=dict(parse_override(item) for item in args.get("backbone_args", [])),
    )
    model.load_state_dict(blob["model"])
    return model.eval(), blob["classes"]


@torch.no_grad()
def predict(model, image, threshold: float = 0.5) -> dict:
    """Detections of one PIL image with a score of at least ``threshold``."""
    import numpy as np

    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    out = model([x.permute(2, 0, 1)])[0]
    keep = out["scores"] >= threshold
    return {k: v[keep] for k, v in out.items()}


def draw(image, found: dict, classes: list[str], out: Path) -> Path:
    """``image`` with the boxes, labels, scores and masks of ``found`` drawn on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 6 * image.height / image.width))
    ax.imshow(image)
    colours = plt.cm.tab10.colors
    for i in range(found["boxes"].shape[0]):
        colour = colours[int(found["labels"][i]) % len(colours)]
        x0, y0, x1, y1 = found["boxes"][i].tolist()
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=colour, lw=2))
        name = classes[int(found["labels"][i]) - 1]
        ax.text(
            x0,
            y0,
            f"{name} {float(found['scores'][i]):.2f}",
            color="white",
            fontsize=8,
            backgroundcolor=colour,
            va="bottom",
        )
        if "masks" in found:
            mask = found["masks"][i, 0].numpy() > 0.5
            overlay = np.zeros((*mask.shape, 4))
            overlay[mask] = (*colour, 0.45)
            ax.imshow(overlay)
    ax.set_axis_off()
    ax.set_title(f"{found['boxes'].shape[0]} detections", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clustervig.detect.predict", description=__doc__
    )
    parser.add_argument("image", help="an image file")
    parser.add_argument("--checkpoint", required=True, help="last.pt / best.pt of detect.train")
    parser.add_argument("--out", default="pred.png", help="the drawing to write")
    parser.add_argument("--threshold", type=float, default=0.5, help="lowest score drawn")
    parser.add_argument("--version", action="version", version=f"clustervig {__version__}")
    args = parser.parse_args(argv)
    where = "python -m clustervig.detect.predict"
    if (code := environment_error(where)) is not None:
        return code
    try:
        from PIL import Image

        if not Path(args.image).is_file():
            raise ValueError(f"argument 'image': no file at {args.image!r}")
        try:
            image = Image.open(args.image).convert("RGB")
        except Exception as err:  # PIL raises many types for a damaged file
            raise ValueError(f"argument 'image': cannot read {args.image} ({err})") from None
        model, classes = load_detector(args.checkpoint)
        found = predict(model, image, args.threshold)
        try:
            path = draw(image, found, classes, Path(args.out))
        except OSError as err:
            raise ValueError(f"--out: cannot write {args.out} ({err.strerror or err})") from None
    except ValueError as err:
        return user_error(where, err)
    print(f"wrote {path} ({found['boxes'].shape[0]} detections at score >= {args.threshold})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
