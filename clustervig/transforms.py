"""Image transforms of training and evaluation (timm's, ImageNet normalisation)."""

from __future__ import annotations

__all__ = ["eval_transform", "train_transform"]


def train_transform(args):
    """timm's training augmentation as ``args`` set it (random-resized crop ``--scale``,
    ``--hflip``, ``--randaugment``, random erasing ``--reprob``) + ImageNet normalisation."""
    from timm.data import create_transform

    from .conventions import IMAGENET_MEAN, IMAGENET_STD

    return create_transform(
        args.img_size,
        is_training=True,
        scale=tuple(args.scale),
        hflip=args.hflip,
        color_jitter=0.0 if args.img_size < 128 else 0.4,
        auto_augment=None if args.randaugment == "none" else args.randaugment,
        interpolation="bicubic",
        re_prob=args.reprob,
        re_mode="pixel",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def eval_transform(img_size: int):
    """Resize + centre crop (none below 128 px: a 32 px image has no border to spare) +
    ImageNet normalisation."""
    from timm.data import create_transform

    from .conventions import IMAGENET_MEAN, IMAGENET_STD

    return create_transform(
        img_size,
        is_training=False,
        interpolation="bicubic",
        crop_pct=1.0 if img_size < 128 else 0.9,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
