"""``python -m clustervig.demo_data OUT``: a small real image data set as an ImageFolder.

The images are scikit-learn's handwritten digits (1,797 scans of 8x8 px, ten classes, from the
UCI "Optical Recognition of Handwritten Digits" set), which ship inside the scikit-learn package:
nothing is downloaded. They are written as grey-scale PNGs to ``OUT/train/<digit>/`` and
``OUT/val/<digit>/`` (a stratified split, fixed by ``--seed``), ready for
``python -m clustervig.train --data OUT --img-size 32``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .cli import environment_error, user_error

__all__ = ["write_digits"]


def write_digits(
    out: str | Path, val_fraction: float = 0.2, seed: int = 0, per_class: int | None = None
) -> tuple[int, int]:
    """Write the digits under ``out``; returns ``(train images, val images)``. ``per_class``
    keeps only that many images of each digit (tiny data for tests)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    counts = [0, 0]
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        rng.shuffle(idx)
        if per_class is not None:
            idx = idx[:per_class]
        n_val = max(1, round(len(idx) * val_fraction))
        for split, chosen in (("val", idx[:n_val]), ("train", idx[n_val:])):
            folder = Path(out) / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] * (255 / 16)).round().astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
            counts[split == "val"] += len(chosen)
    return counts[0], counts[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clustervig.demo_data", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("out", help="directory to write (train/ and val/ inside)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="held-out share")
    parser.add_argument("--per-class", type=int, help="at most this many images per digit")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split")
    parser.add_argument("--version", action="version", version=f"clustervig {__version__}")
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.per_class is not None and args.per_class < 2:
        parser.error(f"--per-class must be >= 2, got {args.per_class}")
    if (code := environment_error("python -m clustervig.demo_data")) is not None:
        return code
    try:
        train, val = write_digits(args.out, args.val_fraction, args.seed, args.per_class)
    except OSError as err:
        return user_error(
            "python -m clustervig.demo_data", f"cannot write to {args.out} ({err.strerror or err})"
        )
    print(f"wrote {train} train and {val} val images of 10 digits to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
