"""``python -m clustervig.validate --checkpoint PATH --data DIR``: top-1 / top-5, loss and
throughput of a checkpoint on an ImageFolder split.

A checkpoint written by ``python -m clustervig.train`` carries its model name, options and class
names, so ``--model`` and ``--img-size`` are optional for it; any other state dict (ours, the
authors', the official ViG release) needs ``--model`` (and ``--model-args`` for non-default
options). Add ``--ema`` to validate the EMA weights a training run kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from . import __version__
from ._config import parse_override
from .cli import environment_error, user_error

__all__ = ["main"]


def _parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m clustervig.validate",
        description="Top-1 / top-5 accuracy, loss and throughput of a checkpoint on an "
        "ImageFolder split (DATA/<split>/<class>/*).",
    )
    p.add_argument("--checkpoint", required=True, help="last.pt / best.pt, or any state dict")
    p.add_argument("--data", required=True, help="ImageFolder directory")
    p.add_argument("--split", default="val", help="sub-folder to evaluate (default val)")
    p.add_argument("--model", help="model name (default: the checkpoint's)")
    p.add_argument("--model-args", nargs="*", default=None, metavar="KEY=VALUE")
    p.add_argument("--img-size", type=int, help="default: the checkpoint's, else 224")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--ema", action="store_true", help="validate the checkpoint's EMA weights")
    p.add_argument("--device", default=None, help="default: cuda if present, else cpu")
    p.add_argument("--json", help="also write the result to this file")
    p.add_argument("--version", action="version", version=f"clustervig {__version__}")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def validate(args) -> dict:
    from torch.utils.data import DataLoader

    from .data import ImageFolderData, check_image_folder, collate_skipping_unreadable
    from .distributed import Distributed
    from .registry import canonical_name
    from .run_files import read_checkpoint_blob
    from .train import AMP_DTYPES, build_model, evaluate
    from .transforms import eval_transform

    path = Path(args.checkpoint)
    if not path.is_file():
        raise ValueError(f"--checkpoint: no checkpoint file at {str(path)!r}")
    blob = None
    if path.suffix != ".safetensors":
        blob = read_checkpoint_blob(str(path), "--checkpoint")
    ours = isinstance(blob, dict) and "args" in blob and "model" in blob
    saved = blob["args"] if ours else {}
    model_name = args.model or saved.get("model")
    if not model_name:
        raise ValueError("--model is needed for a checkpoint not written by clustervig.train")
    overrides = (
        saved.get("model_overrides", {})
        if args.model_args is None
        else dict(parse_override(item) for item in args.model_args)
    )
    build_args = argparse.Namespace(
        model=canonical_name(model_name),
        model_overrides=overrides,
        img_size=args.img_size or saved.get("img_size", 224),
        drop_path=0.0,
    )
    classes = blob.get("classes") if ours else None
    found = check_image_folder(args.data, splits=(args.split,))
    classes = classes or found
    missing = sorted(set(found) - set(classes))
    if missing:
        raise ValueError(
            f"--data: classes the checkpoint was not trained on: {', '.join(missing[:5])}"
        )
    model = build_model(build_args, len(classes))
    if ours:
        state = blob["ema"] if args.ema else blob["model"]
        if state is None:
            raise ValueError("--ema: the checkpoint has no EMA weights (trained without --ema)")
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"--checkpoint: does not fit {model_name} ({err})") from None
    else:
        from .checkpoint import load_checkpoint

        load_checkpoint(model, blob if blob is not None else path)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    data = ImageFolderData(
        Path(args.data) / args.split, classes, eval_transform(build_args.img_size)
    )
    loader = DataLoader(
        data,
        batch_size=args.batch_size,
        num_workers=args.workers,
        collate_fn=collate_skipping_unreadable,
    )
    amp = AMP_DTYPES[args.amp]
    result = evaluate(model, loader, device, amp, Distributed(device))
    return {"model": model_name, "checkpoint": str(path), "split": args.split, **result}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if (code := environment_error("python -m clustervig.validate")) is not None:
        return code
    try:
        result = validate(args)
    except ValueError as err:
        return user_error("python -m clustervig.validate: error", err)
    print(
        f"{result['model']} on {args.data}/{args.split}: top-1 {result['top1']:.2f}%, top-5 "
        f"{result['top5']:.2f}%, loss {result['loss']:.4f}, {result['images']} images, "
        f"{result['images_per_s']:.1f} img/s"
        + (f", {result['skipped']} unreadable skipped" if result["skipped"] else "")
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
