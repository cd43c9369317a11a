"""``create_model(name)``: every model of the project by name, ClusterViG and the baselines."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from .baselines import IVIG_VARIANTS, PVIG_VARIANTS, IViG, PViG
from .model import _ALIASES, VARIANTS, CViG

__all__ = [
    "MODEL_FAMILIES",
    "create_model",
    "list_models",
    "model_from_checkpoint",
    "model_options",
]

#: Display name of every registered model (the paper's spelling).
DISPLAY_NAMES = {
    "cvig_ti": "CViG-Ti",
    "cvig_s": "CViG-S",
    "cvig_b": "CViG-B",
    "cvig_b_hr": "CViG-B†",
    "pvig_ti": "PViG-Ti",
    "pvig_s": "PViG-S",
    "pvig_m": "PViG-M",
    "pvig_b": "PViG-B",
    "ivig_ti": "IViG-Ti",
    "ivig_s": "IViG-S",
    "ivig_b": "IViG-B",
}

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
for _name, _cfg in VARIANTS.items():
    _BUILDERS[_name] = lambda _cfg=_cfg, **kw: CViG(_cfg, **kw)
for _name, _cfg in PVIG_VARIANTS.items():
    _BUILDERS[_name] = lambda _cfg=_cfg, **kw: PViG(_cfg, **kw)
for _name, _cfg in IVIG_VARIANTS.items():
    _BUILDERS[_name] = lambda _cfg=_cfg, **kw: IViG(_cfg, **kw)

MODEL_FAMILIES = {"cvig": list(VARIANTS), "pvig": list(PVIG_VARIANTS), "ivig": list(IVIG_VARIANTS)}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return list(_BUILDERS)


def canonical_name(name: str) -> str:
    """``"CViG-B†"``, ``"cvig-b-hr"``, ``"b†"`` ... -> the registry key (``"cvig_b_hr"``)."""
    if not isinstance(name, str):
        raise ValueError(
            f"create_model: argument 'name' must be a model name, one of {list_models()}, "
            f"got {name!r}"
        )
    key = name.strip().lower().replace("-", "_")
    for registry_key, display in DISPLAY_NAMES.items():
        if key == display.lower().replace("-", "_"):
            return registry_key
    key = _ALIASES.get(key, key)
    if key not in _BUILDERS:
        raise ValueError(
            f"create_model: argument 'name' must be one of {list_models()} (or a display name "
            f"such as 'CViG-Ti'), got {name!r}"
        )
    return key


def create_model(
    name: str,
    features_only: bool = False,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    pretrained: str | bool = False,
    **kwargs,
) -> nn.Module:
    """Build a model by name (``cvig_ti``, ``pvig_s``, ``ivig_b``, ``CViG-B†``, ...).

    Keyword arguments override the variant's config (``num_classes``, ``drop_path_rate``,
    ``img_size``, and for ClusterViG ``num_clusters``, ``local_update``, ``groups``, ...).
    ``features_only=True`` returns a :class:`clustervig.features.FeaturePyramid`: the feature
    maps at strides 4, 8, 16 and 32 picked by ``out_indices`` (for detection and segmentation).
    ``pretrained`` is a checkpoint file in any layout :func:`clustervig.load_checkpoint` reads
    (loaded strictly; no weights are downloaded, so ``True`` is an error, not a silent no-op).
    A checkpoint that records its model (this project's training checkpoints and converted
    files) rebuilds that model: its options (image size, grid, classes, ``--model-args``) fill
    in those not given, and one given otherwise is an error naming it.
    """
    if pretrained is True:
        raise ValueError(
            "create_model: argument 'pretrained' must be a checkpoint path (no weights are "
            "downloaded); got True"
        )
    name = canonical_name(name)
    if pretrained:
        from .checkpoint import load_checkpoint, read_with_config

        source, recorded = read_with_config(pretrained)  # the file read once
        name, kwargs = model_options(name, kwargs, recorded)
    model = _BUILDERS[name](**kwargs)
    model.architecture = name  # timm's pretrained_cfg names it (save_for_hf, local-dir:)
    if pretrained:
        load_checkpoint(model, source)
    if features_only:
        from .features import FeaturePyramid

        return FeaturePyramid(model, out_indices)
    return model


# --------------------------------------------------------------------------------------------
# The model a checkpoint holds
# --------------------------------------------------------------------------------------------
#: Options that change training, not the weights' shapes or meaning: a user's value wins over a
#: checkpoint's without a conflict.
TRAINING_ONLY_OPTIONS = ("drop_path_rate", "drop_rate")


def model_options(
    name: str | None, options: dict, recorded: dict | None, where: str = "create_model"
) -> tuple[str, dict]:
    """``(name, options)`` to build the model of a checkpoint that records ``recorded``: the
    user's ``name`` and ``options`` over the recorded ones; a name or option that contradicts
    the checkpoint is a ``ValueError`` naming it (training-only options such as the drop-path
    rate are the user's to change)."""
    if recorded is None:
        return canonical_name(name), dict(options)
    held = canonical_name(recorded["model"])
    if name is not None and canonical_name(name) != held:
        raise ValueError(f"{where}: the checkpoint holds {held}, not {canonical_name(name)}")
    conflicts = [
        f"{key}={options[key]!r} (the checkpoint's: {value!r})"
        for key, value in recorded["options"].items()
        if key in options and options[key] != value and key not in TRAINING_ONLY_OPTIONS
    ]
    if conflicts:
        raise ValueError(
            f"{where}: options that contradict the checkpoint: {', '.join(conflicts)}; leave "
            "them out to build the model it holds"
        )
    return held, {**recorded["options"], **options}


def model_from_checkpoint(
    name: str | None,
    options: dict,
    checkpoint: str | Path | None,
    where: str,
    default: str | None = None,
) -> tuple[str, nn.Module, dict]:
    """``(name, model, options)`` for a command that takes ``--model``, ``--model-args`` and
    ``--checkpoint``: the model the checkpoint records (:func:`model_options`), built and
    loaded strictly; else the named model (or ``default``), with random weights when there is
    no checkpoint."""
    from .checkpoint import load_checkpoint, read_with_config

    source, recorded = read_with_config(checkpoint) if checkpoint else (None, None)
    if name is None and recorded is None:
        name = default
    if name is None and recorded is None:
        what = "the checkpoint does not say which model it holds" if checkpoint else "no model"
        raise ValueError(f"{where}: {what}; give the model's name (e.g. cvig_ti)")
    name, options = model_options(name, options, recorded, where)
    model = create_model(name, **options)
    if checkpoint:
        load_checkpoint(model, source)
    return name, model, options
