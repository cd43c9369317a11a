"""``python -m clustervig.detect.train --data DIR --model maskrcnn_cvig_s``: train a detector on
COCO-format data and evaluate it with the COCO evaluator every epoch.

``DIR`` holds ``<split>/`` (or ``images/<split>/``) image folders and
``annotations/instances_<split>.json`` for ``--train-split`` and ``--val-split`` (COCO itself:
``--train-split train2017 --val-split val2017``). Recipes: ``--recipe paper`` is the paper's
Table V setup (Mask R-CNN 1x: AdamW, lr 2e-4, weight decay 0.05, 12 epochs with the lr divided
by 10 after epochs 8 and 11, multi-scale training with the shorter side in 480..800 and the
longer at most 1333, evaluation at 800), ``--recipe demo`` the same optimiser for the small
demo set (``python -m clustervig.detect.demo``: 128 px images, a higher lr, 8 epochs). Any value
can be set by its flag. ``--output OUT`` gets ``last.pt`` / ``best.pt`` (by box AP),
``metrics.jsonl`` (per epoch: training loss and its parts, box and mask AP / AP50 / AP75 from
pycocotools' ``COCOeval``) and ``curves.png``; ``--resume OUT/last.pt`` continues a run.
``torchrun --nproc_per_node N -m clustervig.detect.train ...`` trains in N processes.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

import torch

from .. import __version__
from ..cli import environment_error, user_error

__all__ = ["RECIPES", "evaluate", "main", "train"]

RECIPES = {
    "paper": {
        "epochs": 12,
        "lr": 2e-4,
        "weight_decay": 0.05,
        "batch_size": 2,  # per process: 16 on 8 GPUs, as the paper's setup
        "min_size": list(range(480, 801, 32)),
        "max_size": 1333,
        "eval_size": 800,
        "milestones": [8, 11],
    },
    "demo": {
        "epochs": 8,
        "lr": 1e-3,
        "weight_decay": 0.05,
        "batch_size": 8,
        "min_size": [128],
        "max_size": 128,
        "eval_size": 128,
        "milestones": [6],
    },
}


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m clustervig.detect.train", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--data", required=True, help="COCO-format data directory")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", default="val")
    parser.add_argument(
        "--model", default="maskrcnn_cvig_s", help="<maskrcnn|fasterrcnn|retinanet>_<backbone>"
    )
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="paper")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--batch-size", type=int, help="images per process and step")
    parser.add_argument("--min-size", type=int, nargs="+", help="training shorter sides")
    parser.add_argument("--max-size", type=int, help="longest side")
    parser.add_argument("--eval-size", type=int, help="evaluation shorter side")
    parser.add_argument("--milestones", type=int, nargs="*", help="epochs after which lr /= 10")
    parser.add_argument("--frozen-bn", action="store_true", help="freeze the backbone's norms")
    parser.add_argument("--backbone-checkpoint", help="classification weights for the backbone")
    parser.add_argument(
        "--backbone-args",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides of the backbone (e.g. depth=4)",
    )
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument("--clip-grad", type=float, default=5.0, help="gradient norm cap")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--max-steps", type=int, help="stop each epoch after this many steps")
    parser.add_argument("--output", required=True, help="run directory")
    parser.add_argument("--resume", help="continue from this last.pt")
    parser.add_argument("--overwrite", action="store_true", help="replace a run in --output")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", action="version", version=f"clustervig {__version__}")
    args = parser.parse_args(argv)
    for key, value in RECIPES[args.recipe].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if args.lr <= 0 or args.weight_decay < 0:
        parser.error("--lr must be > 0 and --weight-decay >= 0")
    if any(s < 32 for s in args.min_size) or args.max_size < max(args.min_size):
        parser.error("--min-size values must be >= 32 and not above --max-size")
    return args


def _split(data: Path, split: str) -> tuple[Path, Path]:
    images = data / split if (data / split).is_dir() else data / "images" / split
    return images, data / "annotations" / f"instances_{split}.json"


@torch.no_grad()
def evaluate(model, dataset, device, batch_size: int = 4, masks: bool = True) -> dict:
    """COCO box (and mask) AP of ``model`` on ``dataset`` (:class:`CocoInstances`), computed by
    pycocotools' ``COCOeval``: ``bbox_ap``, ``bbox_ap50``, ``bbox_ap75`` (and ``segm_*``)."""
    import io

    import numpy as np
    from pycocotools import mask as mask_utils
    from pycocotools.cocoeval import COCOeval

    from .data import collate

    model.eval()
    results = []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    for images, targets in loader:
        outputs = model([im.to(device) for im in images])
        for target, out in zip(targets, outputs, strict=True):
            boxes = out["boxes"].float().cpu()
            for i in range(boxes.shape[0]):
                x0, y0, x1, y1 = boxes[i].tolist()
                row = {
                    "image_id": target["image_id"],
                    "category_id": dataset.category_of[int(out["labels"][i])],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(out["scores"][i]),
                }
                if masks and "masks" in out:
                    binary = (out["masks"][i, 0] > 0.5).cpu().numpy().astype(np.uint8)
                    rle = mask_utils.encode(np.asfortranarray(binary))
                    rle["counts"] = rle["counts"].decode("ascii")
                    row["segmentation"] = rle
                results.append(row)
    metrics = {}
    kinds = ["bbox"] + (["segm"] if masks and results and "segmentation" in results[0] else [])
    for kind in kinds:
        if not results:
            metrics.update({f"{kind}_ap": 0.0, f"{kind}_ap50": 0.0, f"{kind}_ap75": 0.0})
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its tables
            found = dataset.coco.loadRes(results)
            evaluator = COCOeval(dataset.coco, found, kind)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats = [max(0.0, float(v)) for v in evaluator.stats[:3]]
        metrics.update({f"{kind}_ap": stats[0], f"{kind}_ap50": stats[1], f"{kind}_ap75": stats[2]})
    return metrics


def _plot(metrics: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..run_files import save_figure

    epochs = [m["epoch"] for m in metrics]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(epochs, [m["train_loss"] for m in metrics], "o-")
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    for key, label in (("bbox_ap", "box AP"), ("bbox_ap50", "box AP50"), ("segm_ap", "mask AP")):
        if any(key in m for m in metrics):
            right.plot(epochs, [100 * m.get(key, math.nan) for m in metrics], "o-", label=label)
    right.set(xlabel="epoch", ylabel="COCO AP (%)", title="validation (pycocotools)")
    right.legend()
    save_figure(fig, path)


def train(args) -> list[dict]:
    """The run ``args`` describe (module docstring); returns the metrics rows."""
    from tqdm import tqdm

    from .._config import parse_override
    from ..distributed import Distributed
    from ..run_files import RunOutput, read_checkpoint_blob, write_epoch
    from ..train import AMP_DTYPES, autocast
    from .data import CocoInstances, collate
    from .model import build_detector, split_name

    kind, _ = split_name(args.model)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    masks = kind == "maskrcnn"
    data = Path(args.data)
    train_set = CocoInstances(*_split(data, args.train_split), with_masks=masks)
    val_set = CocoInstances(*_split(data, args.val_split), with_masks=masks)
    if val_set.category_ids != train_set.category_ids:
        raise ValueError("--data: the train and val splits list different categories")
    with RunOutput(args.output, resume=bool(args.resume), overwrite=args.overwrite) as run:
        dist = Distributed(device)
        torch.manual_seed(args.seed + dist.rank)
        model = build_detector(
            args.model,
            train_set.num_classes,
            min_size=tuple(args.min_size),
            max_size=args.max_size,
            frozen_norms=args.frozen_bn,
            backbone_checkpoint=args.backbone_checkpoint,
            backbone_options=dict(parse_override(item) for item in args.backbone_args),
        ).to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.milestones, 0.1)
        metrics: list[dict] = []
        start, best = 0, -1.0
        if args.resume:
            blob = read_checkpoint_blob(args.resume, "--resume")
            if not isinstance(blob, dict) or blob.get("kind") != "detector":
                raise ValueError(f"--resume: {args.resume} is not a checkpoint of this command")
            if blob["args"]["model"] != args.model:
                raise ValueError(
                    f"--resume: {args.resume} trained {blob['args']['model']}, not {args.model}"
                )
            model.load_state_dict(blob["model"])
            optimizer.load_state_dict(blob["optimizer"])
            scheduler.load_state_dict(blob["scheduler"])
            start, best, metrics = blob["epoch"], blob["best"], blob["metrics"]
        trained = model
        if dist.enabled:
            trained = torch.nn.parallel.DistributedDataParallel(model)
        sampler = (
            torch.utils.data.distributed.DistributedSampler(train_set, seed=args.seed)
            if dist.enabled
            else None
        )
        loader = torch.utils.data.DataLoader(
            train_set,
            batch_size=args.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=args.workers,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(args.seed),
        )
        scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
        for epoch in range(start, args.epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            trained.train()
            began, losses, parts, steps = time.perf_counter(), 0.0, {}, 0
            total = len(loader) if args.max_steps is None else min(len(loader), args.max_steps)
            bar = tqdm(
                loader, total=total, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not dist.main
            )
            for images, targets in bar:
                if steps == total:
                    break
                images = [im.to(device) for im in images]
                targets = [
                    {k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
                    for t in targets
                ]
                with autocast(device, AMP_DTYPES[args.amp]):
                    loss_parts = trained(images, targets)
                    loss = sum(loss_parts.values())
                if not torch.isfinite(loss):
                    raise RuntimeError(
                        f"the training loss became {float(loss)} at epoch {epoch + 1}; lower --lr"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, args.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                losses += float(loss.detach())
                for name, value in loss_parts.items():
                    parts[name] = parts.get(name, 0.0) + float(value.detach())
                steps += 1
                bar.set_postfix(
                    loss=f"{losses / steps:.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}"
                )
            scheduler.step()
            model.transform.min_size = (args.eval_size,)
            result = evaluate(model, val_set, device, masks=masks) if dist.main else {}
            model.transform.min_size = tuple(args.min_size)
            row = {
                "epoch": epoch + 1,
                "train_loss": losses / max(steps, 1),
                **{k: v / max(steps, 1) for k, v in parts.items()},
                **result,
                "steps": steps,
                "seconds": round(time.perf_counter() - began, 1),
            }
            metrics.append(row)
            if dist.main:
                improved = result.get("bbox_ap", 0.0) > best
                best = max(best, result.get("bbox_ap", 0.0))
                blob = {
                    "kind": "detector",
                    "args": vars(args),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch + 1,
                    "best": best,
                    "metrics": metrics,
                    "classes": [c["name"] for c in train_set.coco.loadCats(train_set.category_ids)],
                }
                write_epoch(run.path, blob, improved, metrics, plot=_plot)
                shown = ", ".join(f"{k} {v:.3f}" for k, v in result.items() if k.endswith("_ap"))
                print(
                    f"epoch {epoch + 1}/{args.epochs}: train loss {row['train_loss']:.4f}, {shown}"
                )
        dist.close()
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    where = "python -m clustervig.detect.train"
    if (code := environment_error(where)) is not None:
        return code
    try:
        train(args)
    except ValueError as err:
        return user_error(where, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
