"""Checkpoints: ours, the ClusterViG authors' and the official ViG / Pyramid ViG releases.

:func:`load_checkpoint` reads a file (``.pth``/``.pt`` through ``torch.load(weights_only=True)``,
or ``.safetensors``) or a state dict, unwraps the usual containers (``{"model": ...}``,
``{"state_dict": ...}``, a DataParallel ``module.`` prefix), recognises the key layout, converts
it to this project's keys and loads it strictly by default, returning a :class:`LoadReport`
(layout, missing and unexpected keys, what was dropped). Key maps follow the authors' code as
``shared/REFERENCE.md`` describes it:

- ``clustervig-authors``: ``stem.convs.{0,1,3,4,...}`` (conv, BN, GELU flat), ``cpe.pe``,
  ``graphconv.layer.nn_vertex...`` (the local-update MLP, dense), ``nn_centroids`` (GATv2, ``att``
  of shape ``[1, 1, C]``), ``prediction.{1,2}``, ``head`` / ``dist_head``;
- ``vig-official``: ``stem.convs.*`` flat, Pyramid ViG's ``backbone.{j}.conv`` downsamplers,
  ``graph_conv.gconv.nn``, frozen ``relative_pos`` tables (dropped: this project rebuilds them),
  isotropic ViG's ``backbone.{i}.{0,1}`` (Grapher, FFN) pairs, ``prediction.{0,1,4}``.

``python -m clustervig convert SRC DST --model NAME`` writes the converted state dict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "LAYOUTS",
    "LoadReport",
    "convert_state_dict",
    "detect_layout",
    "first_line",
    "load_checkpoint",
    "read_with_config",
    "recorded_config",
]

#: The safetensors metadata key under which ``convert`` records the model a file holds.
CONFIG_METADATA_KEY = "clustervig_model_config"


LAYOUTS = ("clustervig", "clustervig-authors", "vig-official")


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did."""

    layout: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # converted away on purpose

    def __str__(self) -> str:
        parts = [f"layout {self.layout}"]
        for name in ("missing", "unexpected", "dropped"):
            keys = getattr(self, name)
            if keys:
                shown = ", ".join(keys[:6]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 6 else ""
                )
                parts.append(f"{name}: {shown}")
        return "; ".join(parts)


def first_line(text: str) -> str:
    """The first non-empty line of a message, without ANSI colours (torch's carry them)."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()]
    return next((line for line in lines if line), "")[:300]


def read_checkpoint_file(path: str | Path, flag: str = "load_checkpoint"):
    """The contents of a checkpoint file, loaded as data only (``torch.load(weights_only=True)``:
    tensors and plain containers; safetensors files as their tensors), or a one-line
    ``ValueError`` naming ``flag``: no file, an empty file, a file that holds Python objects
    (refused unread, with how to convert one you trust), a damaged or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{flag}: no checkpoint file at {str(path)!r}")
    if path.stat().st_size == 0:
        raise ValueError(f"{flag}: {str(path)!r} is empty")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt or foreign file is reported
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            raise ValueError(
                f"{flag}: {str(path)!r} holds a {found.group(1)} object, not only tensors, and "
                "was refused unread (loading it could run code); if you trust it, load it once "
                "inside torch.serialization.safe_globals([...its classes]) and torch.save its "
                "state dict to a new file"
            ) from None
        # torch's refusal opens with advice; what it found follows "WeightsUnpickler error:"
        reason = first_line(text.split("WeightsUnpickler error:", 1)[-1]) or type(err).__name__
        raise ValueError(f"{flag}: cannot read {str(path)!r} as a checkpoint ({reason})") from None


def read_state_dict(source: str | Path | dict) -> dict[str, Tensor]:
    """A flat ``{key: tensor}`` from a file or a (possibly wrapped) state dict."""
    if isinstance(source, (str, Path)):
        state = read_checkpoint_file(source)
    else:
        state = source
    for wrapper in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError("load_checkpoint: the checkpoint holds no state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def detect_layout(state: dict[str, Tensor]) -> str:
    """``clustervig``, ``clustervig-authors`` or ``vig-official`` (else ``ValueError``)."""
    keys = list(state)
    if any(".graphconv.layer." in k or ".cpe.pe." in k for k in keys):
        return "clustervig-authors"
    if any(".graph_conv.gconv." in k for k in keys) or "prediction.4.weight" in state:
        return "vig-official"
    if any(k.startswith("head.prediction.") for k in keys):
        return "clustervig"
    raise ValueError(
        "load_checkpoint: unrecognised checkpoint keys (e.g. "
        f"{', '.join(keys[:3])}); expected one of the layouts {LAYOUTS}"
    )


def _stem_key(key: str, prefix: str) -> str | None:
    """``stem.convs.{n}.rest`` (conv, BN, GELU flat) -> ``{prefix}{n // 3}.{n % 3}.rest``."""
    match = re.match(r"^stem\.convs\.(\d+)\.(.+)$", key)
    if not match:
        return None
    n = int(match.group(1))
    return f"{prefix}{n // 3}.{n % 3}.{match.group(2)}"


def _authors_key(key: str) -> str | None:
    """ClusterViG authors' key -> ours (None: dropped)."""
    stem = _stem_key(key, "stem.convs.")
    if stem is not None:
        return stem
    for pattern, repl in (
        (r"\.cpe\.pe\.", ".cpe."),
        (
            r"\.graphconv\.layer\.nn_vertex\.layer\.lins\.0\.head_list\.0\.",
            ".degc.local_update.mlp.0.",
        ),
        (r"\.graphconv\.layer\.nn_vertex\.layer\.norms\.0\.module\.", ".degc.local_update.mlp.1."),
        (r"\.graphconv\.layer\.nn_centroids\.layer\.layer\.", ".degc.global_update."),
        (r"^head\.", "head.head."),  # before prediction -> head.prediction, not after
        (r"^dist_head\.", "head.dist_head."),
        (r"^prediction\.", "head.prediction."),
    ):
        key = re.sub(pattern, repl, key)
    return key


def _vig_key(key: str, pyramid: bool) -> str | None:
    """Official ViG / Pyramid ViG key -> ours (None: dropped)."""
    if key.endswith(".relative_pos"):
        return None  # a frozen table this project rebuilds (a buffer here)
    stem = _stem_key(key, "stem.")
    if stem is not None:
        return stem
    key = key.replace(".graph_conv.gconv.nn.", ".graph_conv.nn.")
    head = re.match(r"^prediction\.(\d+)\.(.+)$", key)
    if head:
        index = {"0": "head.prediction.1", "1": "head.prediction.2", "4": "head.head"}
        if head.group(1) not in index:
            return None
        return f"{index[head.group(1)]}.{head.group(2)}"
    if pyramid:
        return re.sub(r"^backbone\.(\d+)\.conv\.(\d)\.", r"backbone.\1.\2.", key)
    pair = re.match(r"^backbone\.(\d+)\.(0|1)\.(.+)$", key)
    if pair:
        return f"backbone.{2 * int(pair.group(1)) + int(pair.group(2))}.{pair.group(3)}"
    return key


def convert_state_dict(
    state: dict[str, Tensor], model: nn.Module, layout: str | None = None, strict: bool = True
) -> tuple[dict[str, Tensor], str, list[str]]:
    """``state`` in this project's keys for ``model``: ``(converted, layout, dropped keys)``.

    Shapes are adapted where the layouts differ only in shape (GATv2's ``att``, a linear head
    as a 1x1 conv, the local-update MLP's ``(groups, out, in)`` weight). A tensor whose shape
    cannot fit raises ``ValueError``, or with ``strict=False`` is dropped (the model keeps its own:
    fine-tuning with another class count).
    """
    from .baselines import PViG

    layout = layout or detect_layout(state)
    if layout not in LAYOUTS:
        raise ValueError(f"load_checkpoint: argument 'layout' must be one of {LAYOUTS}")
    ours = model.state_dict()
    converted: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if layout == "clustervig":
            new = key
        elif layout == "clustervig-authors":
            new = _authors_key(key)
        else:
            new = _vig_key(key, isinstance(model, PViG))
        if new is None or (new.startswith("head.dist_head.") and new not in ours):
            dropped.append(key)
            continue
        if new in ours and value.shape != ours[new].shape:
            try:
                value = _reshape(key, new, value, ours[new])
            except ValueError:
                if strict:
                    raise
                dropped.append(key)
                continue
        converted[new] = value
    return converted, layout, dropped


def _reshape(key: str, new: str, value: Tensor, target: Tensor) -> Tensor:
    if value.numel() == target.numel() and not new.endswith("local_update.mlp.0.weight"):
        return value.reshape(target.shape)  # att [1, 1, C] -> [C]; Linear -> 1x1 conv
    if new.endswith("local_update.mlp.0.weight") and value.dim() == 2:
        groups = target.shape[0]
        if groups != 1:
            raise ValueError(
                f"load_checkpoint: {key} is a dense {tuple(value.shape)} local-update MLP, the "
                f"model groups it in {groups}: create the model with groups=1 to load it"
            )
        return value.reshape(target.shape)
    raise ValueError(
        f"load_checkpoint: {key} has shape {tuple(value.shape)}, the model's {new} "
        f"{tuple(target.shape)}: a checkpoint of another variant or class count? (for another "
        "class count load with strict=False, the head stays as built)"
    )


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The classifier head(s) of ``model`` as key prefixes (timm's ``pretrained_cfg``
    ``classifier``, plus the distillation head)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or "head.head"
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in (*names, "head.dist_head"))


def _keys(keys: list[str], shown: int = 5) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def load_checkpoint(
    model: nn.Module,
    source: str | Path | dict,
    strict: bool = True,
    layout: str | None = None,
    loose: tuple[str, ...] = (),
) -> LoadReport:
    """Load ``source`` (a file or a state dict in any of :data:`LAYOUTS`) into ``model``.

    ``strict`` (default): every key of the model must be filled and none may be left over,
    else ``ValueError`` with the first keys and their count. ``strict=False`` loosens only the
    classifier head(s) (another class count: the head stays as built) and the key prefixes in
    ``loose``: any other key missing, left over or of another shape is still a ``ValueError``,
    never a silently random backbone layer. Buffers the model rebuilds (relative-position
    tables) may be absent. Returns what was loaded, missing, unexpected and dropped.
    """
    state = read_state_dict(source)
    converted, found, dropped = convert_state_dict(state, model, layout, strict)
    ours = model.state_dict()
    rebuilt = {k for k in ours if k.endswith("relative_pos")}
    missing = sorted(k for k in ours if k not in converted and k not in rebuilt)
    unexpected = sorted(k for k in converted if k not in ours)
    report = LoadReport(found, missing, unexpected, dropped)
    if strict and (missing or unexpected):
        raise ValueError(f"load_checkpoint: the checkpoint does not fit the model ({report})")
    if not strict:
        allowed = _classifier_prefixes(model) + tuple(loose)
        bad_missing = [k for k in missing if not k.startswith(allowed)]
        bad_unexpected = [k for k in unexpected if not k.startswith(allowed)]
        if bad_missing or bad_unexpected:
            parts = [f"missing {_keys(bad_missing)}"] if bad_missing else []
            parts += [f"unexpected {_keys(bad_unexpected)}"] if bad_unexpected else []
            raise ValueError(
                "load_checkpoint: strict=False loosens only the classifier "
                f"({', '.join(p.rstrip('.') for p in allowed)}); the checkpoint does not fit "
                f"the rest of {type(model).__name__} ({'; '.join(parts)}); a checkpoint of "
                "another model or variant? (loose=(...) names more key prefixes to allow)"
            )
        converted = {k: v for k, v in converted.items() if k in ours}
    model.load_state_dict({**{k: ours[k] for k in rebuilt}, **converted}, strict=False)
    return report


# --------------------------------------------------------------------------------------------
# Checkpoints that say which model they hold
# --------------------------------------------------------------------------------------------
def recorded_config(source: str | Path | dict) -> dict | None:
    """``{"model": name, "options": {...}}`` of the model a checkpoint holds, where it says so:
    training checkpoints (``model_config``, or the ``args`` of older ones) and safetensors
    written by ``python -m clustervig convert`` (their metadata); ``None`` otherwise."""
    import json

    blob = source
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            if path.suffix == ".safetensors" and path.is_file():
                from safetensors import safe_open

                with safe_open(str(path), "pt") as f:
                    text = (f.metadata() or {}).get(CONFIG_METADATA_KEY)
                return json.loads(text) if text else None
            blob = read_checkpoint_file(path)
        except Exception:  # noqa: BLE001 - unreadable: the loader reports it
            return None
    if not isinstance(blob, dict):
        return None
    config = blob.get("model_config")
    if isinstance(config, dict) and isinstance(config.get("model"), str):
        return {"model": config["model"], "options": dict(config.get("options") or {})}
    args = blob.get("args")
    if isinstance(args, dict) and isinstance(args.get("model"), str) and "model" in blob:
        return {"model": args["model"], "options": dict(args.get("model_overrides") or {})}
    return None


def read_with_config(source: str | Path | dict) -> tuple[str | Path | dict, dict | None]:
    """``(what to load, the model it records)`` of a checkpoint, reading a torch file once (its
    contents are returned to load); a safetensors file's record is its metadata, its tensors are
    read when loaded. A missing or unreadable file is :func:`read_checkpoint_file`'s error."""
    if isinstance(source, (str, Path)) and Path(source).suffix != ".safetensors":
        blob = read_checkpoint_file(source)
        return blob, recorded_config(blob)
    return source, recorded_config(source)
