"""The files of a training run (``python -m clustervig.train``) and the checkpoints its flags read.

Reading: :func:`read_checkpoint_blob` (``torch.load`` with errors that name the flag),
:func:`load_pretrained` (``--pretrained``: a fine-tuning start) and :func:`resume_checkpoint`
(``--resume``). Writing, into ``--output``: :func:`write_epoch` (``last.pt`` / ``best.pt``
atomically, ``metrics.jsonl``, ``curves.png``); :func:`read_metrics` reads the metrics back.
:class:`RunOutput` guards the directory: written before any work is done, locked for one run
(a second run into it refuses, naming the first), an existing run continued only with
``--resume`` and replaced only with ``--overwrite``, and a run that failed before writing
anything leaves no directory behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "RUN_FILES",
    "RunOutput",
    "load_pretrained",
    "read_checkpoint_blob",
    "read_metrics",
    "replacing",
    "resume_checkpoint",
    "save_figure",
    "save_file",
    "write_epoch",
]


def read_checkpoint_blob(path: str, flag: str):
    """``torch.load`` of a checkpoint (tensors and plain containers only), or a one-line
    ``ValueError`` naming ``flag`` for a missing, empty, damaged or foreign file
    (:func:`clustervig.checkpoint.read_checkpoint_file`)."""
    from .checkpoint import read_checkpoint_file

    return read_checkpoint_file(path, flag)


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


def _option_changes(was: dict, now: dict) -> list[str]:
    changes = []
    if was["model"] != now["model"]:
        changes.append(f"--model {was['model']} -> {now['model']}")
    keys = sorted(set(was["options"]) | set(now["options"]))
    for key in keys:
        a, b = was["options"].get(key, "(default)"), now["options"].get(key, "(default)")
        if a != b:
            changes.append(f"{key}={a} -> {b}")
    return changes


def resume_checkpoint(
    path, model, optimizer, scheduler, scaler, ema, model_config: dict | None = None
) -> tuple[int, float]:
    """Load ``last.pt`` at ``path`` into the run's model, optimiser, scheduler, scaler and EMA;
    returns ``(epochs done, best top-1)``. With ``model_config`` (``{"model", "options"}`` of
    this run), a checkpoint of another model or other model options is refused, naming them."""
    blob = read_checkpoint_blob(path, "--resume")
    if not isinstance(blob, dict) or "model" not in blob or "optimizer" not in blob:
        raise ValueError(f"--resume: {path} is not a last.pt written by clustervig.train")
    from .checkpoint import recorded_config

    recorded = recorded_config(blob)
    if model_config is not None and recorded is not None:
        changes = _option_changes(recorded, model_config)
        if changes:
            raise ValueError(
                f"--resume: {path} was trained with other model options ({'; '.join(changes)}); "
                "resume with the options it was trained with, or start a new run"
            )
    try:
        model.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        scaler.load_state_dict(blob["scaler"])
        if ema is not None and blob.get("ema") is not None:
            ema.module.load_state_dict(blob["ema"])
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        from .checkpoint import first_line

        raise ValueError(
            f"--resume: {path} is not a checkpoint of this run's model and options "
            f"({first_line(str(err)) or type(err).__name__})"
        ) from None
    return int(blob["epoch"]), float(blob.get("best_top1", -1.0))


@contextlib.contextmanager
def replacing(path: Path):
    """A private temporary file beside ``path`` (unique: two writers never share one), renamed
    over ``path`` when the block succeeds and removed when it fails."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_file(path: Path, blob: dict) -> None:
    """Write atomically: a crash mid-write never leaves a truncated checkpoint."""
    with replacing(path) as tmp:
        torch.save(blob, tmp)


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
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Lay out, write atomically as PNG and close a matplotlib figure (a run's curves)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)


def write_epoch(
    out: Path, checkpoint: dict, improved: bool, metrics: list[dict], plot=None
) -> None:
    """``last.pt`` (and ``best.pt`` when validation improved), ``metrics.jsonl``, the curves
    (``plot(metrics, path)``: by default the classification curves)."""
    save_file(out / "last.pt", checkpoint)
    if improved:
        save_file(out / "best.pt", checkpoint)
    with replacing(out / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (plot or _plot)(metrics, out / "curves.png")


def read_metrics(path: Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` (none when there is no file)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


#: What a run writes into ``--output``.
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "curves.png")
_LOCK = ".clustervig-train.lock"


class RunOutput:
    """``--output`` of one training run, held for the run's length (``with RunOutput(...)``).

    On entry: the directory is created (or found) and written to, or a ``ValueError`` names
    ``--output`` and why; a lock is taken, so a second run into the same directory refuses with
    the first one's process id; an earlier run's files are kept unless ``resume`` (continue it)
    or ``overwrite`` (remove them now). On exit after a failure, a directory this run created
    and left with nothing but its lock is removed."""

    def __init__(self, path: str | Path, resume: bool = False, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.resume, self.overwrite = resume, overwrite
        self._handle = None
        self._created = False

    def __enter__(self) -> RunOutput:
        import fcntl

        path = self.path
        self._created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
            if not path.is_dir():
                raise NotADirectoryError(f"{path} is not a directory")
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
                pass
            self._handle = open(path / _LOCK, "a+")  # noqa: SIM115 - held until __exit__
        except OSError as err:
            raise ValueError(f"--output: cannot write to {path} ({_os_reason(err)})") from None
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "another process"
            self._handle.close()
            self._handle = None
            raise ValueError(
                f"--output: {path} is in use by another training run ({holder}); wait for it "
                "to finish or choose another --output"
            ) from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self._handle.flush()
        existing = [name for name in RUN_FILES if (path / name).exists()]
        if existing and not self.resume:
            if not self.overwrite:
                self._release()
                raise ValueError(
                    f"--output: {path} already holds a run ({', '.join(existing)}); continue "
                    f"it with --resume {path / 'last.pt'} or replace it with --overwrite"
                )
            for name in existing:
                (path / name).unlink()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self._release()
        if kind is not None and self._created:
            left = [p for p in self.path.iterdir() if p.name != _LOCK] if self.path.is_dir() else []
            if not left:
                shutil.rmtree(self.path, ignore_errors=True)

    def _release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases the lock
            self._handle = None


def _os_reason(err: OSError) -> str:
    return err.strerror or str(err) if err.errno is not None else str(err)
