"""The files of a training run (``python -m clustervig.train``) and the checkpoints its flags read.

Reading: :func:`read_checkpoint_blob` (``torch.load`` with errors that name the flag),
:func:`load_pretrained` (``--pretrained``: a fine-tuning start) and :func:`resume_checkpoint`
(``--resume``). Writing, into ``--output``: :func:`write_epoch` (``last.pt`` / ``best.pt``
atomically, ``metrics.jsonl``, ``curves.png``); :func:`read_metrics` reads the metrics back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "load_pretrained",
    "read_checkpoint_blob",
    "read_metrics",
    "resume_checkpoint",
    "write_epoch",
]


def read_checkpoint_blob(path: str, flag: str):
    """``torch.load`` of a checkpoint (tensors and plain containers only), or a ``ValueError``
    naming ``flag`` for a missing, damaged or foreign file."""
    if not Path(path).is_file():
        raise ValueError(f"{flag}: no checkpoint file at {path!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle of arbitrary objects, not a checkpoint
        raise ValueError(f"{flag}: cannot read {path} as a checkpoint ({err})") from None


def _model_state(path: str):
    """The model weights of ``path``: a checkpoint of this command (``{"model": ...}``) or any
    state-dict file."""
    if path.endswith(".safetensors"):
        return path
    blob = read_checkpoint_blob(path, "--pretrained")
    return blob["model"] if isinstance(blob, dict) and "model" in blob else blob


def load_pretrained(model: nn.Module, path: str) -> str:
    """Fine-tuning start: every tensor that fits; the position embedding interpolated to the
    model's grid; the classifiers kept as built when the class count differs."""
    from .checkpoint import convert_state_dict, read_state_dict

    state = read_state_dict(_model_state(path))
    ours = model.state_dict()
    if (
        "pos_embed" in state
        and "pos_embed" in ours
        and state["pos_embed"].shape != ours["pos_embed"].shape
    ):
        state["pos_embed"] = F.interpolate(
            state["pos_embed"].float(), size=ours["pos_embed"].shape[2:], mode="bicubic"
        ).to(ours["pos_embed"].dtype)
    converted, layout, dropped = convert_state_dict(state, model, strict=False)
    fitting = {k: v for k, v in converted.items() if k in ours and v.shape == ours[k].shape}
    fresh = sorted(k for k in ours if k not in fitting and not k.endswith("relative_pos"))
    stray = [k for k in fresh if not k.startswith("head.")]
    if stray:
        raise ValueError(
            f"--pretrained: {path} does not fit {type(model).__name__} beyond its classifier "
            f"(missing: {', '.join(stray[:5])}); is it a checkpoint of another model?"
        )
    model.load_state_dict(fitting, strict=False)
    note = f"loaded {len(fitting)} tensors ({layout} layout)"
    return note + (f"; classifier re-initialised ({len(fresh)} tensors)" if fresh else "")


def resume_checkpoint(path, model, optimizer, scheduler, scaler, ema) -> tuple[int, float]:
    """Load ``last.pt`` at ``path`` into the run's model, optimiser, scheduler, scaler and EMA;
    returns ``(epochs done, best top-1)``."""
    blob = read_checkpoint_blob(path, "--resume")
    try:
        model.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        scaler.load_state_dict(blob["scaler"])
        if ema is not None and blob.get("ema") is not None:
            ema.module.load_state_dict(blob["ema"])
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        raise ValueError(
            f"--resume: {path} is not a checkpoint of this run's model and options ({err})"
        ) from None
    return int(blob["epoch"]), float(blob.get("best_top1", -1.0))


def _save(path: Path, blob: dict) -> None:
    """Write atomically: a crash mid-write never leaves a truncated checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def _plot(metrics: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in metrics]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(epochs, [m["train_loss"] for m in metrics], "o-", label="train")
    left.plot(epochs, [m["val_loss"] for m in metrics], "s-", label="val")
    left.set(xlabel="epoch", ylabel="loss", title="loss", yscale="log")
    left.legend()
    right.plot(epochs, [m["val_top1"] for m in metrics], "o-", label="val top-1")
    right.plot(epochs, [m["val_top5"] for m in metrics], "s-", label="val top-5")
    if any("ema_val_top1" in m for m in metrics):
        right.plot(epochs, [m.get("ema_val_top1") for m in metrics], "^--", label="EMA top-1")
    right.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy", ylim=(0, 100))
    right.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_epoch(out: Path, checkpoint: dict, improved: bool, metrics: list[dict]) -> None:
    """``last.pt`` (and ``best.pt`` when validation improved), ``metrics.jsonl``, the curves."""
    _save(out / "last.pt", checkpoint)
    if improved:
        _save(out / "best.pt", checkpoint)
    tmp = out / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(m) + "\n" for m in metrics))
    os.replace(tmp, out / "metrics.jsonl")
    _plot(metrics, out / "curves.png")


def read_metrics(path: Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` (none when there is no file)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
