"""Image data for training and validation: ImageFolder directories, checked up front, where an
unreadable image is skipped (with a warning, counted) instead of ending an epoch.

A data directory holds ``train/<class>/*`` and ``val/<class>/*`` (the layout of ImageNet and of
torchvision's ``ImageFolder``); the class names and their order come from ``train``.
Augmentation is timm's (``timm.data.create_transform``); this module needs torchvision and timm
(``pip install -e ".[train]"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataError",
    "ImageFolderData",
    "check_image_folder",
    "collate_skipping_unreadable",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A data directory that cannot be used, with the reason and what was expected."""


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def check_image_folder(root: str | Path, splits: tuple[str, ...] = ("train", "val")) -> list[str]:
    """The class names of the ImageFolder ``root`` (from ``train``, else the first split), after
    checking every split: it exists, has class folders, no class is empty, and every split's
    classes are among the first one's. Raises :class:`DataError` saying what is wrong."""
    root = Path(root)
    layout = f"expected {root}/{splits[0]}/<class>/<image> (ImageFolder layout"
    layout += f", with {' and '.join(splits)} splits)" if len(splits) > 1 else ")"
    if not root.is_dir():
        raise DataError(f"--data: {str(root)!r} is not a directory; {layout}")
    classes: list[str] | None = None
    for split in splits:
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"--data: {root} has no '{split}' folder; {layout}")
        # Hidden folders (.ipynb_checkpoints, .git, ...) are not classes.
        names = sorted(
            p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not names:
            loose = _images_in(folder)
            hint = f" ({len(loose)} images lie directly in it)" if loose else ""
            raise DataError(f"--data: {folder} has no class folders{hint}; {layout}")
        for name in names:
            if not _images_in(folder / name):
                raise DataError(
                    f"--data: class '{name}' in {folder} has no images (accepted: "
                    f"{', '.join(IMAGE_EXTENSIONS)}); remove the folder or add images"
                )
        if classes is None:
            classes = names
        elif not set(names) <= set(classes):
            extra = sorted(set(names) - set(classes))
            raise DataError(
                f"--data: {folder} has classes that '{splits[0]}' lacks: {', '.join(extra[:5])}"
            )
    assert classes is not None
    return classes


class ImageFolderData(torch.utils.data.Dataset):
    """``root/<class>/<image>`` as ``(image tensor, class index)``, with ``classes`` given (so
    train and val agree on the indices). An image that cannot be read yields ``None`` (dropped
    by :func:`collate_skipping_unreadable`, which counts it) and one warning naming the file."""

    def __init__(self, root: str | Path, classes: list[str], transform: Callable | None = None):
        self.root = Path(root)
        self.classes = list(classes)
        self.transform = transform
        self.samples: list[tuple[Path, int]] = []
        for index, name in enumerate(self.classes):
            folder = self.root / name
            if folder.is_dir():
                self.samples += [(path, index) for path in _images_in(folder)]
        self.targets = [target for _, target in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | None:
        from PIL import Image

        path, target = self.samples[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                image.load()
        except Exception as err:  # PIL raises many types for a damaged file
            warnings.warn(f"skipping unreadable image {path}: {err}", stacklevel=2)
            return None
        return (self.transform(image) if self.transform else image), target


def collate_skipping_unreadable(batch: list) -> tuple[Tensor, Tensor, int]:
    """``(images (B, 3, H, W), targets (B,), skipped)``: the readable samples of ``batch``
    stacked, and how many were unreadable."""
    kept = [sample for sample in batch if sample is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([image for image, _ in kept])
    targets = torch.tensor([target for _, target in kept], dtype=torch.long)
    return images, targets, skipped
