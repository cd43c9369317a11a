"""``python -m clustervig.train``: train or fine-tune a model on an ImageFolder directory.

    python -m clustervig.train --data DIR --model cvig_ti --img-size 32 --epochs 10 --output OUT

The paper's recipe is DeiT's (AdamW, cosine schedule with warm-up, label smoothing, RandAugment,
mixup/cutmix, random erasing, hard distillation through the distillation head): ``--recipe
deit``. The default ``--recipe small`` keeps the optimiser and schedule but drops the heavy
regularisation that only pays off over hundreds of ImageNet epochs, so a few epochs on a few
thousand small images already learn. Every recipe value can be set by its own flag.

Several processes: ``torchrun --nproc_per_node N -m clustervig.train ...`` (DistributedDataParallel,
gloo on CPU, NCCL on GPU; ``--batch-size`` is per process; batch norm statistics are synchronised
across processes); logging and checkpoints on rank 0 only.

``OUT`` receives ``last.pt`` / ``best.pt`` (model, optimiser, scheduler, scaler, EMA, epoch,
args), ``metrics.jsonl`` (one object per epoch) and ``curves.png`` (redrawn every epoch).
``--resume OUT/last.pt`` continues an interrupted run where its last finished epoch ended, with
the same result as an uninterrupted run (every epoch reseeds from ``--seed`` and its number).

This module holds the command line, the recipes and the training loop; beside it
:mod:`clustervig.distributed` (the process group, batch norm across processes),
:mod:`clustervig.transforms` (the image transforms) and :mod:`clustervig.run_files` (the
checkpoints the flags read, the files ``OUT`` receives).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import __version__
from ._config import parse_override
from .cli import environment_error, user_error
from .distributed import Distributed, sync_batch_norm
from .run_files import (
    RunOutput,
    load_pretrained,
    read_checkpoint_blob,
    read_metrics,
    resume_checkpoint,
    write_epoch,
)
from .transforms import eval_transform, train_transform

__all__ = [
    "AMP_DTYPES",
    "RECIPES",
    "auto_grid",
    "autocast",
    "build_model",
    "build_parser",
    "eval_transform",
    "evaluate",
    "main",
    "recalibrate_batch_norm",
    "resolved_overrides",
    "run",
]

#: Values each recipe gives the flags left unset. ``deit`` is the paper's (DeiT's) ImageNet
#: recipe at batch 1024 (``lr`` scales linearly with the global batch: lr * batch / 1024).
RECIPES: dict[str, dict[str, object]] = {
    "small": {
        "lr": 2e-3,
        "weight_decay": 0.05,
        "warmup_epochs": 1.0,
        "min_lr": 1e-5,
        "smoothing": 0.1,
        "scale": (0.5, 1.0),
        "hflip": 0.0,
        "randaugment": "none",
        "mixup": 0.0,
        "cutmix": 0.0,
        "reprob": 0.0,
        "drop_path": 0.0,
        "clip_grad": 5.0,
    },
    "deit": {
        "lr": 2e-3,
        "weight_decay": 0.05,
        "warmup_epochs": 5.0,
        "min_lr": 1e-5,
        "smoothing": 0.1,
        "scale": (0.08, 1.0),
        "hflip": 0.5,
        "randaugment": "rand-m9-mstd0.5-inc1",
        "mixup": 0.8,
        "cutmix": 1.0,
        "reprob": 0.25,
        "drop_path": 0.1,
        "clip_grad": 5.0,
    },
}
_LR_REFERENCE_BATCH = {"small": None, "deit": 1024}


def auto_grid(img_size: int, model_name: str) -> int | None:
    """ClusterViG's node grid for ``img_size`` when none is given: the variant's own (16 px a
    node) from 224 px up. Below, 8 px a node where that gives 2..14 nodes a side (32 px: 4x4
    nodes instead of 2x2; 64 px: 8x8), else 16, 4 or 2 px a node, whichever divides the size
    first (28 px: 7x7 nodes of 4 px). None for the other families, or when nothing fits
    (the model then says which sizes work). ``--model-args grid=G`` overrides it; finer grids
    learn a little more per epoch at a higher cost per image on a CPU."""
    if not model_name.startswith("cvig") or img_size >= 224:
        return None
    for pixels in (8, 16, 4, 2):
        if img_size % pixels == 0 and 2 <= img_size // pixels <= 14:
            return img_size // pixels
    for pixels in (16, 8):  # e.g. 200 px: 25x25 nodes of 8 px (CViG-B† has 28x28)
        if img_size % pixels == 0 and img_size // pixels <= 28:
            return img_size // pixels
    return None


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clustervig.train",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1]
        + " Recipe values left unset come from --recipe.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data and model")
    g.add_argument(
        "--data", required=True, help="ImageFolder directory: DATA/{train,val}/<class>/*"
    )
    g.add_argument("--model", default="cvig_ti", help="any registered name (cvig_ti, pvig_s, ...)")
    g.add_argument(
        "--model-args", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides"
    )
    g.add_argument("--img-size", type=int, default=224, help="training and validation size (px)")
    g.add_argument("--workers", type=int, default=None, help="loader processes (default: cores-2)")
    g.add_argument(
        "--pretrained",
        help="checkpoint to fine-tune from (any layout we read; "
        "another class count re-initialises the head, another size interpolates the "
        "position embedding)",
    )
    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--batch-size", type=int, default=64, help="images per step and process")
    g.add_argument("--recipe", choices=sorted(RECIPES), default="small")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--min-lr", type=float, help="learning rate at the end of the cosine")
    g.add_argument(
        "--weight-decay", type=float, help="AdamW decay (not on norms, biases, position embeddings)"
    )
    g.add_argument("--warmup-epochs", type=float, help="linear warm-up length (epochs)")
    g.add_argument("--clip-grad", type=float, help="gradient norm clip (0: off)")
    g.add_argument("--smoothing", type=float, help="label smoothing")
    g.add_argument("--drop-path", type=float, help="stochastic depth rate")
    g = p.add_argument_group("augmentation (timm)")
    g.add_argument(
        "--scale",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="random-resized-crop area range",
    )
    g.add_argument("--hflip", type=float, help="horizontal flip probability")
    g.add_argument(
        "--randaugment", help="timm auto-augment spec, e.g. rand-m9-mstd0.5-inc1, or 'none'"
    )
    g.add_argument("--mixup", type=float, help="mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, help="cutmix alpha (0: off)")
    g.add_argument("--reprob", type=float, help="random erasing probability")
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher", help="a timm model name or a checkpoint written by this command")
    g.add_argument("--teacher-checkpoint", help="weights for a timm --teacher (no download)")
    g.add_argument(
        "--distillation",
        choices=("hard", "soft", "none"),
        default=None,
        help="default: hard with a --teacher, else none",
    )
    g.add_argument("--distillation-tau", type=float, default=1.0, help="soft distillation T")
    g = p.add_argument_group("execution")
    g.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    g.add_argument("--grad-checkpointing", action="store_true")
    g.add_argument("--ema", action="store_true", help="keep an EMA of the weights (validated too)")
    g.add_argument("--ema-decay", type=float, default=0.999)
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument(
        "--bn-recalibrate",
        type=int,
        default=5,
        metavar="BATCHES",
        help="before each validation, re-estimate batch-norm statistics over this many training "
        "batches at the current weights (0: keep the running averages)",
    )
    g.add_argument("--device", default=None, help="default: cuda if present, else cpu")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--output", required=True, help="directory for checkpoints and metrics")
    g.add_argument("--resume", help="a last.pt to continue from")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in --output (without it, such a run is kept and this one "
        "refuses to start)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--version", action="version", version=f"clustervig {__version__}")
    return p


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for key, value in RECIPES[args.recipe].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for name in ("epochs", "batch_size", "img_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if args.bn_recalibrate < 0:
        parser.error(f"--bn-recalibrate must be >= 0, got {args.bn_recalibrate}")
    if args.distillation is None:
        args.distillation = "hard" if args.teacher else "none"
    if args.distillation != "none" and not args.teacher:
        parser.error(f"--distillation {args.distillation} needs a --teacher")
    if (args.mixup > 0 or args.cutmix > 0) and args.batch_size % 2:
        parser.error("--mixup/--cutmix need an even --batch-size")
    try:
        from .registry import canonical_name

        args.model = canonical_name(args.model)
        args.model_overrides = dict(parse_override(item) for item in args.model_args)
    except ValueError as err:
        parser.error(str(err).replace("create_model: argument 'name'", "--model"))
    return args


# ---------------------------------------------------------------------------------------------
# pieces
# ---------------------------------------------------------------------------------------------
def _seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


def _loaders(args, dist: Distributed, classes: list[str]):
    from torch.utils.data import DataLoader, DistributedSampler

    from .data import ImageFolderData, collate_skipping_unreadable

    train_set = ImageFolderData(Path(args.data) / "train", classes, train_transform(args))
    val_set = ImageFolderData(Path(args.data) / "val", classes, eval_transform(args.img_size))
    workers = args.workers if args.workers is not None else max(0, (os.cpu_count() or 1) - 2)
    # One sampler for 1 or N processes: the same permutation per epoch (seed + epoch), rank r
    # taking every N-th index, so N processes see exactly the batches one process would.
    sampler = DistributedSampler(
        train_set, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=args.seed
    )
    # Workers start anew every epoch (not persistent): their seeds then come from the
    # per-epoch reseeded main RNG, so a resumed run augments exactly as an uninterrupted one.
    common = {"num_workers": workers, "collate_fn": collate_skipping_unreadable}
    train = DataLoader(
        train_set,
        batch_size=args.batch_size,
        sampler=sampler,
        # Full batches only (as timm trains): batch norm cannot train on a last batch of one.
        drop_last=len(train_set) >= args.batch_size * dist.world,
        **common,
    )
    shard = list(range(dist.rank, len(val_set), dist.world))  # no padding: exact metrics
    val = DataLoader(torch.utils.data.Subset(val_set, shard), batch_size=args.batch_size, **common)
    return train, val, sampler, len(train_set), len(val_set)


def build_model(args, num_classes: int) -> nn.Module:
    """The model ``args`` name (``args.model``) with :func:`resolved_overrides` for
    ``num_classes``: the one a checkpoint of this command rebuilds from its ``args``."""
    from .registry import create_model

    return create_model(args.model, **resolved_overrides(args, num_classes))


def resolved_overrides(args, num_classes: int) -> dict:
    """The model's config overrides: ``--model-args`` plus the class count, the image size and
    its grid, the drop-path rate. Checkpoints keep these (not the rules that made them), so a
    later change of a default cannot change the model a checkpoint rebuilds."""
    overrides = dict(args.model_overrides)
    overrides.setdefault("num_classes", num_classes)
    if args.img_size != 224 or "img_size" in overrides:
        overrides.setdefault("img_size", args.img_size)
        grid = auto_grid(args.img_size, args.model)
        if grid is not None and "grid" not in overrides:
            overrides["grid"] = grid
    if args.drop_path:
        overrides.setdefault("drop_path_rate", args.drop_path)
    return overrides


def _teacher(args, num_classes: int, device: torch.device) -> nn.Module | None:
    if not args.teacher:
        return None
    if Path(args.teacher).is_file():
        blob = read_checkpoint_blob(args.teacher, "--teacher")
        if not (isinstance(blob, dict) and "args" in blob and "model" in blob):
            raise ValueError(
                f"--teacher: {args.teacher} is not a checkpoint written by clustervig.train; "
                "for a timm teacher give its model name and --teacher-checkpoint"
            )
        if blob["num_classes"] != num_classes:
            raise ValueError(
                f"--teacher: {args.teacher} predicts {blob['num_classes']} classes, the data "
                f"has {num_classes}"
            )
        teacher_args = argparse.Namespace(**blob["args"])
        teacher = build_model(teacher_args, blob["num_classes"])
        teacher.load_state_dict(blob["model"])
    else:
        import timm

        if args.teacher not in timm.list_models():
            raise ValueError(f"--teacher: {args.teacher!r} is neither a file nor a timm model name")
        if args.teacher_checkpoint:  # checked here: timm's loader would raise a traceback
            read_checkpoint_blob(args.teacher_checkpoint, "--teacher-checkpoint")
        try:
            teacher = timm.create_model(
                args.teacher, num_classes=num_classes, checkpoint_path=args.teacher_checkpoint
            )
        except (RuntimeError, KeyError, ValueError) as err:
            if not args.teacher_checkpoint:
                raise
            from .checkpoint import first_line

            raise ValueError(
                f"--teacher-checkpoint: {args.teacher_checkpoint} does not fit {args.teacher} "
                f"({first_line(str(err)) or repr(err)})"
            ) from None
        if not args.teacher_checkpoint:
            warnings.warn(
                "the --teacher has random weights (no --teacher-checkpoint)", stacklevel=2
            )
    teacher.eval().requires_grad_(False)
    return teacher.to(device)


def _head_outputs(outputs) -> tuple[Tensor, Tensor | None]:
    if isinstance(outputs, (tuple, list)):
        return outputs[0], outputs[1]
    return outputs, None


def _loss(args, outputs, targets: Tensor, soft_targets: Tensor | None, images, teacher):
    """DeiT's loss: the class head on the labels; the distillation head on the teacher (hard:
    its argmax, soft: its tempered distribution), or on the labels without a teacher."""
    logits, dist_logits = _head_outputs(outputs)

    def base(out: Tensor) -> Tensor:
        if soft_targets is not None:
            return torch.sum(-soft_targets * F.log_softmax(out.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(out.float(), targets, label_smoothing=args.smoothing)

    if dist_logits is None:
        return base(logits)
    if teacher is None or args.distillation == "none":
        return 0.5 * (base(logits) + base(dist_logits))
    with torch.no_grad():
        teacher_logits = _head_outputs(teacher(images))[0].float()
    if args.distillation == "hard":
        distill = F.cross_entropy(dist_logits.float(), teacher_logits.argmax(-1))
    else:
        tau = args.distillation_tau
        distill = F.kl_div(
            F.log_softmax(dist_logits.float() / tau, -1),
            F.log_softmax(teacher_logits / tau, -1),
            reduction="batchmean",
            log_target=True,
        ) * (tau * tau)
    return 0.5 * base(logits) + 0.5 * distill


@torch.no_grad()
def recalibrate_batch_norm(
    model: nn.Module, loader, device, amp_dtype, batches: int, min_batch: int = 2
) -> None:
    """Batch-norm statistics re-estimated at the current weights: the plain average over
    ``batches`` training batches (train-mode forwards, no gradient). Early in training the
    running averages (momentum 0.1) trail weights that move fast, and an evaluation with them
    can sit at chance level while the training loss is already low."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    seen = 0
    for images, targets, _ in loader:
        if seen >= batches:
            break
        if len(targets) < min_batch:
            continue
        with autocast(device, amp_dtype):
            model(images.to(device))
        seen += 1
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def _on_step(epoch: int, step: int) -> None:
    """Called after every optimiser step (tests interrupt a run here)."""


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, amp_dtype, dist: Distributed) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) over ``loader`` (summed across processes), images/s."""
    model.eval()
    loss_sum = top1 = top5 = count = skipped = 0.0
    start = time.perf_counter()
    for images, targets, bad in loader:
        skipped += bad
        if not len(targets):
            continue
        images, targets = images.to(device), targets.to(device)
        with autocast(device, amp_dtype):
            logits = _head_outputs(model(images))[0].float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = ranked.eq(targets[:, None])
        top1 += hits[:, 0].sum().item()
        top5 += hits.any(dim=1).sum().item()
        count += len(targets)
    seconds = time.perf_counter() - start
    loss_sum, top1, top5, count, skipped = dist.sum([loss_sum, top1, top5, count, skipped])
    n = max(count, 1)
    return {
        "loss": loss_sum / n,
        "top1": 100 * top1 / n,
        "top5": 100 * top5 / n,
        "images": int(count),
        "skipped": int(skipped),
        "images_per_s": count / max(seconds, 1e-9),
    }


#: ``--amp`` of the training, validation and detection commands -> the autocast dtype.
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, dtype):
    """Autocast to ``dtype`` on ``device`` (an ``AMP_DTYPES`` value), or nothing for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _progress(total: int, epoch: int, epochs: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=f"epoch {epoch + 1}/{epochs}",
        unit="img",
        unit_scale=True,
        disable=not enabled,
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=0.5 if sys.stderr.isatty() else 10.0,
    )


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    """Train as ``args`` say; returns the last epoch's metrics."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # torchrun: a GPU each
        torch.cuda.set_device(device)
    dist = Distributed(device)
    try:
        out = Path(args.output)
        with contextlib.ExitStack() as held:
            if dist.main:  # checked and locked before any work; other processes write nothing
                held.enter_context(RunOutput(out, bool(args.resume), args.overwrite))
            return _run(args, device, dist, out)
    finally:
        dist.close()


def _run(args, device: torch.device, dist: Distributed, out: Path) -> dict:
    """The run itself, with ``out`` held (:class:`RunOutput`) by the main process."""
    from timm.data import Mixup
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from timm.utils import ModelEmaV3

    from .data import check_image_folder

    classes = check_image_folder(args.data)
    _seed(args.seed)
    args.model_overrides = resolved_overrides(args, len(classes))
    model_config = {"model": args.model, "options": dict(args.model_overrides)}
    model = build_model(args, len(classes))
    if args.pretrained:
        note = load_pretrained(model, args.pretrained)
        if dist.main:
            print(f"--pretrained: {note}", file=sys.stderr)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    if dist.enabled:
        model = sync_batch_norm(model, device)
    teacher = _teacher(args, len(classes), device)
    train_loader, val_loader, sampler, n_train, n_val = _loaders(args, dist, classes)
    steps_per_epoch = len(train_loader)
    global_batch = args.batch_size * dist.world
    lr = args.lr
    if _LR_REFERENCE_BATCH[args.recipe]:
        lr = lr * global_batch / _LR_REFERENCE_BATCH[args.recipe]
    optimizer = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=args.weight_decay)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(1, args.epochs * steps_per_epoch),
        lr_min=args.min_lr,
        warmup_t=int(args.warmup_epochs * steps_per_epoch),
        warmup_lr_init=lr / 100,
        t_in_epochs=False,
    )
    amp_dtype = AMP_DTYPES[args.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    ema = ModelEmaV3(model, decay=args.ema_decay) if args.ema else None
    mixup = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=args.mixup,
            cutmix_alpha=args.cutmix,
            label_smoothing=args.smoothing,
            num_classes=len(classes),
        )
    start_epoch, best_top1, metrics = 0, -1.0, []
    if args.resume:
        start_epoch, best_top1 = resume_checkpoint(
            args.resume, model, optimizer, scheduler, scaler, ema, model_config
        )
        metrics = read_metrics(out / "metrics.jsonl")[:start_epoch]
    train_model = model
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if args.compile:
        train_model = torch.compile(train_model)
    if dist.main:
        print(
            f"{args.model}: {len(classes)} classes, {n_train} train / {n_val} val images, "
            f"{args.img_size} px, {dist.world} process(es) x batch {args.batch_size}, "
            f"{steps_per_epoch} steps an epoch, recipe {args.recipe}, lr {lr:.3g}, "
            f"device {device}",
            file=sys.stderr,
        )
    last: dict = {}
    for epoch in range(start_epoch, args.epochs):
        _seed(args.seed + 1000 * epoch + dist.rank)  # an epoch depends on its number only
        sampler.set_epoch(epoch)
        model.train()
        loss_sum = seen = skipped_images = skipped_steps = 0.0
        started = time.perf_counter()
        bar = _progress(
            len(sampler) * dist.world, epoch, args.epochs, dist.main and not args.no_progress
        )
        for step, (images, targets, bad) in enumerate(train_loader):
            skipped_images += bad
            # All but one image unreadable: batch norm needs two. Several processes must all
            # take every step (their collectives pair up); there the norm sees every
            # process's images, so one is enough.
            if len(targets) < (1 if dist.enabled else 2):
                continue
            images, targets = images.to(device), targets.to(device)
            soft = None
            if mixup is not None and len(targets) % 2 == 0:
                images, soft = mixup(images, targets)
            with autocast(device, amp_dtype):
                outputs = train_model(images)
                loss = _loss(args, outputs, targets, soft, images, teacher)
            optimizer.zero_grad(set_to_none=True)
            value = loss.item()
            if not math.isfinite(value) and args.amp != "fp16":
                skipped_steps += 1  # fp16: the scaler skips the step and lowers its scale
                warnings.warn(
                    f"non-finite loss at epoch {epoch + 1} step {step}: skipped", stacklevel=1
                )
                continue
            scaler.scale(loss).backward()
            if args.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            scale_before = scaler.get_scale() if scaler.is_enabled() else 1.0
            scaler.step(optimizer)
            scaler.update()
            if scaler.is_enabled() and scaler.get_scale() < scale_before:
                skipped_steps += 1  # inf/NaN gradients: fp16 overflow, step skipped
            elif math.isfinite(value):
                loss_sum += value * len(targets)
                seen += len(targets)
            scheduler.step_update(epoch * steps_per_epoch + step + 1)
            if ema is not None:
                ema.update(model, step=epoch * steps_per_epoch + step)
            bar.update(len(targets) * dist.world)
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            _on_step(epoch, step)
        bar.close()
        epoch_s = time.perf_counter() - started
        loss_sum, seen, skipped_images, skipped_steps = dist.sum(
            [loss_sum, seen, skipped_images, skipped_steps]
        )
        if not seen:  # nothing trained: no checkpoint may claim otherwise
            raise ValueError(
                f"epoch {epoch + 1} trained on no image ({int(skipped_images)} unreadable, "
                f"{int(skipped_steps)} steps skipped for a non-finite loss); check --data"
            )
        recalibrate_batch_norm(
            model,
            train_loader,
            device,
            amp_dtype,
            args.bn_recalibrate,
            min_batch=1 if dist.enabled else 2,
        )
        val = evaluate(model, val_loader, device, amp_dtype, dist)
        last = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "val_loss": val["loss"],
            "val_top1": val["top1"],
            "val_top5": val["top5"],
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": seen / max(epoch_s, 1e-9),
            "epoch_s": epoch_s,
            "skipped_images": int(skipped_images + val["skipped"]),
            "skipped_steps": int(skipped_steps),
        }
        if ema is not None:
            ema_val = evaluate(ema.module, val_loader, device, amp_dtype, dist)
            last["ema_val_top1"] = ema_val["top1"]
            last["ema_val_top5"] = ema_val["top5"]
        improved = last["val_top1"] > best_top1
        best_top1 = max(best_top1, last["val_top1"])
        if dist.main:
            metrics.append(last)
            checkpoint = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else None,
                "epoch": last["epoch"],
                "best_top1": best_top1,
                "args": dict(vars(args)),
                "model_config": model_config,
                "num_classes": len(classes),
                "classes": classes,
                "version": __version__,
            }
            write_epoch(out, checkpoint, improved, metrics)
            print(
                f"epoch {epoch + 1}/{args.epochs}: train loss {last['train_loss']:.4f}, "
                f"val loss {last['val_loss']:.4f}, top-1 {last['val_top1']:.2f}%, top-5 "
                f"{last['val_top5']:.2f}%, {last['images_per_s']:.1f} img/s, "
                f"{epoch_s:.1f} s"
                + (
                    f", skipped {last['skipped_images']} unreadable image(s)"
                    if last["skipped_images"]
                    else ""
                ),
                file=sys.stderr,
            )
    return last


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if (code := environment_error("python -m clustervig.train")) is not None:
        return code
    from .data import DataError

    try:
        run(args)
    except (DataError, ValueError) as err:
        return user_error("python -m clustervig.train: error", err)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; continue with --resume {Path(args.output) / 'last.pt'} "
            "(from the last finished epoch)",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
