"""``create_model(name)``: every model of the project by name, ClusterViG and the baselines."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from .baselines import IVIG_VARIANTS, PVIG_VARIANTS, IViG, PViG
from .model import _ALIASES, VARIANTS, CViG

__all__ = ["create_model", "list_models", "MODEL_FAMILIES"]

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
        from .checkpoint import model_options, recorded_config

        name, kwargs = model_options(name, kwargs, recorded_config(pretrained))
    model = _BUILDERS[name](**kwargs)
    if pretrained:
        from .checkpoint import load_checkpoint

        load_checkpoint(model, pretrained)
    if features_only:
        from .features import FeaturePyramid

        return FeaturePyramid(model, out_indices)
    return model
