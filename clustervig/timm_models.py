"""Every model of the project in timm's registry: ``timm.create_model("cvig_ti", num_classes=10)``.

timm has no plugin mechanism, so the models are registered when both timm and clustervig are
imported, in either order: ``import clustervig`` registers them at once if timm is already
imported, and otherwise arranges for registration right after timm's own import finishes (an
import hook; nothing is imported early, so ``import clustervig`` stays as fast without timm).

What timm passes to an entry point is translated: ``in_chans`` -> ``in_channels``, ``device``
/ ``dtype`` -> built under that device and converted,
``global_pool`` -> ``reset_classifier``, ``features_only`` / ``out_indices`` -> this project's
:class:`~clustervig.features.FeaturePyramid`, ``pretrained=True`` with
``pretrained_cfg_overlay=dict(file=PATH)`` -> :func:`clustervig.load_checkpoint` (any layout it
reads). No weights are downloaded: ``pretrained=True`` without a file is an error.

The DEGC and ViG graph layers are registered as FX leaves, so timm's FX feature extraction
(``timm.models.create_feature_extractor``) traces the classification models.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

__all__ = ["install", "register"]

_registered = False


def _entrypoint(name: str) -> Callable[..., nn.Module]:
    """timm's entry point for model ``name``: ``fn(pretrained=False, **kwargs) -> model``."""

    def build(pretrained: bool = False, **kwargs) -> nn.Module:
        from .registry import create_model

        overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
        cfg = kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_model_args", None)  # also passed as keywords themselves
        kwargs.pop("cache_dir", None)
        if "in_chans" in kwargs:
            kwargs["in_channels"] = kwargs.pop("in_chans")
        global_pool = kwargs.pop("global_pool", None)
        features_only = kwargs.pop("features_only", False)
        out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
        feature_cls = kwargs.pop("feature_cls", None)
        if feature_cls not in (None, "list", "getter"):
            raise ValueError(
                f"{name}: argument 'feature_cls' must be 'list' or 'getter' (the feature pyramid "
                f"at strides 4/8/16/32), got {feature_cls!r}; for FX extraction call "
                f"timm.models.create_feature_extractor on the classification model"
            )
        checkpoint = overlay.get("file") if isinstance(overlay, dict) else None
        if checkpoint is None and pretrained and cfg is not None:
            checkpoint = _weights_file(cfg)
        if pretrained and not checkpoint:
            raise ValueError(
                f"{name}: no pretrained weights are downloaded; pass a local checkpoint as "
                f"pretrained_cfg_overlay=dict(file=PATH) (with pretrained=True) or "
                f"checkpoint_path=PATH"
            )
        if isinstance(out_indices, int):
            out_indices = tuple(range(4 - out_indices, 4))
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = create_model(
                name,
                features_only=bool(features_only),
                out_indices=tuple(out_indices),
                pretrained=checkpoint if pretrained else False,
                **kwargs,
            )
        if device is not None or dtype is not None:  # fixed tables are built on the CPU
            model.to(device=device, dtype=dtype)
        if global_pool is not None and not features_only and global_pool != model.head.global_pool:
            # a new pooling only: the classifier (pretrained, maybe) is kept
            model.reset_classifier(model.num_classes, global_pool)
        return model

    build.__name__ = build.__qualname__ = name
    build.__module__ = __name__
    build.__doc__ = f"{name}: this project's model, built by :func:`clustervig.create_model`."
    return build


def _weights_file(cfg) -> str | None:
    """The weights a timm ``pretrained_cfg`` points at: its ``file``, or inside a
    ``local-dir:`` folder (``timm.models.save_for_hf``'s layout) its safetensors or pickle."""
    source = cfg.get("file") if isinstance(cfg, dict) else getattr(cfg, "file", None)
    if not source:
        return None
    folder = Path(source)
    if folder.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (folder / name).is_file():
                return str(folder / name)
        return None
    return str(folder)


def register() -> None:
    """Put every model into timm's registry (idempotent; timm must be importable)."""
    global _registered
    if _registered:
        return
    from timm.layers import register_notrace_module
    from timm.models import register_model

    from .baselines import ViGGrapher
    from .degc import DEGC
    from .layers import PositionConv
    from .registry import DISPLAY_NAMES, list_models

    module = sys.modules[__name__]
    module.default_cfgs = {}  # read by register_model: the default pretrained cfg per name
    for name in list_models():
        model_cls_cfg = _default_cfg(name, DISPLAY_NAMES[name])
        module.default_cfgs[name] = model_cls_cfg
        setattr(module, name, register_model(_entrypoint(name)))
    # FX leaves for timm's feature extraction: the graph layers build their graphs from values,
    # and the CPE picks its CPU thread count from its input's size. (The input checks are
    # torch.fx.wrap-ped where the models call them.)
    register_notrace_module(DEGC)
    register_notrace_module(ViGGrapher)
    register_notrace_module(PositionConv)
    _registered = True


def _default_cfg(name: str, display: str) -> dict:
    """The model's ``pretrained_cfg`` as timm keeps it in its registry (no weights: no url).
    Written out rather than read off a built model, which would cost seconds at ``import timm``;
    tests/clustervig/test_timm.py checks it against every model's own ``pretrained_cfg``."""
    from .baselines import IVIG_VARIANTS, PVIG_VARIANTS, IViG, PViG
    from .conventions import pretrained_cfg
    from .model import VARIANTS, CViG

    pool = {"cvig_b_hr": 28}.get(name, 7 if name.startswith("pvig") else 14)
    first_conv = "stem.convs.0.0" if name.startswith("cvig") else "stem.0.0"
    family, configs = next(
        (f, c)
        for f, c in ((CViG, VARIANTS), (PViG, PVIG_VARIANTS), (IViG, IVIG_VARIANTS))
        if name in c
    )
    side = family.smallest_input_side(configs[name])
    return {
        **pretrained_cfg(1000, 224, 3, pool, first_conv, side),
        "paper_name": "ClusterViG" if name.startswith("cvig") else "Vision GNN",
        "notes": (display,),
    }


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``timm`` is about to be imported, wraps its loader so that
    :func:`register` runs as soon as the module has executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module):
            original(module)
            try:
                register()
            except Exception as err:  # never break the user's `import timm`
                warnings.warn(
                    f"clustervig: could not register its models with timm "
                    f"{getattr(module, '__version__', '')}: "
                    f"{err}",
                    stacklevel=2,
                )

        loader.exec_module = exec_module
        return spec


def install() -> None:
    """Register now if timm is imported, else as soon as it is (no-op without timm)."""
    if "timm" in sys.modules:
        register()
    elif importlib.machinery.PathFinder.find_spec("timm") is not None and not any(
        isinstance(f, _AfterTimmImport) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _AfterTimmImport())
