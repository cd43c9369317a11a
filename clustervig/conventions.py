"""timm's model conventions, shared by ClusterViG and the ViG baselines.

Every model here is ``stem -> (+ pos_embed) -> backbone (a Sequential of blocks) -> head``
(:class:`clustervig.layers.ClassifierHead`); this mixin gives them the API that timm users,
training scripts and detection frameworks expect: ``num_classes`` / ``num_features``,
``forward_features`` (unpooled) / ``forward_head(x, pre_logits)``, ``get_classifier`` /
``reset_classifier``, ``pretrained_cfg``, ``no_weight_decay``, ``group_matcher`` and
``set_grad_checkpointing``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "FeatureInfo",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneConventions",
    "isotropic_taps",
    "min_input_side",
    "pretrained_cfg",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureInfo(list):
    """``feature_info``: a list of ``{"num_chs", "reduction", "module"}`` dicts, one per feature
    map, with timm's accessors (``channels()``, ``reduction()``, ``module_name()``; each takes an
    optional index)."""

    def _get(self, key: str, idx: int | None = None):
        return [f[key] for f in self] if idx is None else self[idx][key]

    def channels(self, idx: int | None = None):
        return self._get("num_chs", idx)

    def reduction(self, idx: int | None = None):
        return self._get("reduction", idx)

    def module_name(self, idx: int | None = None):
        return self._get("module", idx)


def min_input_side(reduction: int, min_nodes: int) -> int:
    """The smallest square input whose coarsest grid (the input over ``reduction``) has
    ``min_nodes`` nodes."""
    return reduction * math.ceil(math.sqrt(min_nodes))


def pretrained_cfg(
    num_classes: int,
    img_size: int,
    in_channels: int,
    pool_size: int,
    first_conv: str,
    min_side: int | None = None,
) -> dict:
    """A timm ``pretrained_cfg`` (no weights are downloaded: ``url`` is empty);
    ``min_input_size`` when ``min_side`` is given (timm's tests and resolvers size inputs by
    it)."""
    extra = {} if min_side is None else {"min_input_size": (in_channels, min_side, min_side)}
    return {
        **extra,
        "url": "",
        "num_classes": num_classes,
        "input_size": (in_channels, img_size, img_size),
        "pool_size": (pool_size, pool_size),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "first_conv": first_conv,
        "classifier": "head.head",
        "license": "apache-2.0",
    }


def isotropic_taps(depth: int, channels: int, reduction: int) -> list[tuple[int, int, int]]:
    """Feature taps of an isotropic model whose backbone is ``depth`` (Grapher, FFN) pairs:
    ``(backbone index, channels, reduction)`` after blocks ``depth/4, depth/2, 3 depth/4, depth``
    (rounded)."""
    blocks = sorted({max(1, round((j + 1) * depth / 4)) for j in range(4)})
    return [(2 * b - 1, channels, reduction) for b in blocks]


def _tap_indices(method: str, indices, count: int) -> list[int]:
    """timm's ``indices``: None (all taps), an int ``n`` (the last n) or a sequence of taps."""
    if indices is None:
        chosen = list(range(count))
    elif isinstance(indices, int) and not isinstance(indices, bool):
        chosen = list(range(count - indices, count)) if 0 < indices <= count else []
    else:
        chosen = [
            i + count if isinstance(i, int) and not isinstance(i, bool) and i < 0 else i
            for i in indices
        ]
    if not chosen or any(
        isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count for i in chosen
    ):
        raise ValueError(
            f"{method}: argument 'indices' must select among {count} taps (0..{count - 1}, or "
            f"a count 1..{count}), got {indices!r}"
        )
    return chosen


class BackboneConventions:
    """Mixin for ``nn.Module`` models with ``stem``, ``pos_embed``, ``backbone`` (Sequential),
    ``head`` (ClassifierHead), ``config``, ``_embed(x)`` (checked input -> stem -> + position
    embedding) and ``feature_taps()`` (``(backbone index, channels, reduction)`` per tap)."""

    grad_checkpointing: bool = False
    #: The registry name the model was built by (``create_model``), timm's ``architecture``.
    architecture: str | None = None
    #: Run the blocks on channels-last feature maps (set by :func:`clustervig.deploy`, the
    #: inference form; every block keeps its input's layout, so one model runs in either).
    channels_last: bool = False
    stem: nn.Module
    backbone: nn.Sequential
    head: nn.Module

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def num_features(self) -> int:
        """Channels of ``forward_features``' output (the last tap's after
        :meth:`prune_intermediate_layers`)."""
        if getattr(self, "_tap_count", None):
            return self.feature_taps()[-1][1]
        return self.head.in_channels

    @property
    def in_chans(self) -> int:
        """Input channels, under timm's name."""
        return self.config.in_channels

    @property
    def head_hidden_size(self) -> int:
        """Width of the pooled features ``forward_head(x, pre_logits=True)`` returns."""
        return self.head.hidden

    @property
    def default_cfg(self) -> dict:
        return self.pretrained_cfg

    def _with_architecture(self, cfg: dict) -> dict:
        """``cfg`` with timm's ``architecture`` (and ``tag``) when the model has a registry
        name: ``timm.models.save_for_hf`` writes it, ``local-dir:`` reads it back."""
        if self.architecture:
            cfg = {"architecture": self.architecture, "tag": "", **cfg}
        return cfg

    # -- classifier ----------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for ``num_classes`` (0: the model returns its pooled features);
        ``global_pool=""`` makes the model return its unpooled features."""
        self.head.reset(num_classes, global_pool)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``(B, C, H, W)`` features -> logits (or the pooled features with ``pre_logits``)."""
        return self.head(x, pre_logits=pre_logits)

    def input_layout(self, x: Tensor) -> Tensor:
        """The checked input in the layout the blocks run in (:attr:`channels_last`)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, num_features, H / r, W / r)``: the unpooled features."""
        return self.run_blocks(self._embed(x))

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return self.forward_head(self.forward_features(x))

    # -- features for dense prediction ---------------------------------------------------------
    def feature_taps(self) -> list[tuple[int, int, int]]:
        """``(backbone index, channels, reduction)`` per feature tap; an isotropic model's (the
        default): after 4 evenly spaced blocks. Pyramid models override :meth:`all_taps`.
        After :meth:`prune_intermediate_layers`, the taps its blocks still reach."""
        taps = self.all_taps()
        return taps[: getattr(self, "_tap_count", len(taps))]

    def all_taps(self) -> list[tuple[int, int, int]]:
        """The taps of the unpruned model (see :meth:`feature_taps`)."""
        return isotropic_taps(self.config.depth, self.config.channels, self.reduction)

    @property
    def feature_info(self) -> FeatureInfo:
        """One entry per feature tap: ``num_chs``, ``reduction`` (stride) and ``module``."""
        return FeatureInfo(
            {"num_chs": c, "reduction": r, "module": f"backbone.{i}"}
            for i, c, r in self.feature_taps()
        )

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The feature maps at the taps of ``feature_info``, timm's way.

        Args:
            indices: which taps (a list), the last ``n`` (an int), or all (None).
            norm: apply the final norm to the taps (these models have none: no change).
            stop_early: run no block after the last tap asked for (the final features
                returned are then the last tap's map).
            output_fmt: ``"NCHW"`` or ``"NHWC"`` (the maps permuted).
            intermediates_only: return the taps only (and stop after the last of them).

        Returns ``(final features, taps)`` or the taps alone.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(
                f"forward_intermediates: argument 'output_fmt' must be 'NCHW' or 'NHWC', "
                f"got {output_fmt!r}"
            )
        taps = self.feature_taps()
        chosen = _tap_indices("forward_intermediates", indices, len(taps))
        wanted = {taps[i][0]: i for i in chosen}
        last = max(wanted) if (intermediates_only or stop_early) else len(self.backbone) - 1
        outputs: dict[int, Tensor] = {}
        x = self._embed(x)
        checkpointing = self._checkpointing()
        for j, block in enumerate(self.backbone):
            x = checkpoint(block, x, use_reentrant=False) if checkpointing else block(x)
            if j in wanted:
                outputs[wanted[j]] = x if output_fmt == "NCHW" else x.permute(0, 2, 3, 1)
            if j == last:
                break
        intermediates = [outputs[i] for i in chosen]
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self,
        indices: int | list[int] | tuple[int, ...] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop every block after the last tap in ``indices`` (as
        :meth:`forward_intermediates` takes them) and, with ``prune_head``, the head (the model
        then returns its unpooled features); ``prune_norm`` has nothing to drop here. Returns
        the tap indices taken, for :meth:`forward_intermediates`."""
        taps = self.feature_taps()
        chosen = _tap_indices("prune_intermediate_layers", indices, len(taps))
        last_block = taps[max(chosen)][0]
        self.backbone = nn.Sequential(*list(self.backbone)[: last_block + 1])
        self._tap_count = max(chosen) + 1
        if prune_head:
            self.head.remove()
        return chosen

    def __prepare_scriptable__(self):
        """TorchScript cannot compile these models (their graph steps are custom ops with
        Python-side dispatch and type-generic layers): say so, and what works instead. timm's
        own test suite declares them unscriptable the way it does its ``hiera`` / ``hrnet``
        families (``tests/timm_suite.py``)."""
        raise RuntimeError(
            f"{type(self).__name__} cannot be scripted with torch.jit.script: use "
            "torch.compile(model), torch.export.export(model, ...) or "
            "`python -m clustervig export NAME` (ONNX) instead"
        )

    # -- training ------------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """Parameters that take no weight decay besides norms and biases: the position
        embedding."""
        return {"pos_embed"}

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise learning-rate decay (timm's format)."""
        return {"stem": r"^stem|^pos_embed", "blocks": r"^backbone\.(\d+)"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block in the backward pass instead of keeping its activations."""
        self.grad_checkpointing = bool(enable)

    def run_blocks(self, x: Tensor) -> Tensor:
        """The backbone, block by block under checkpointing when enabled and training."""
        if self._checkpointing():
            for block in self.backbone:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return self.backbone(x)

    def _checkpointing(self) -> bool:
        """Whether blocks are recomputed in the backward (:meth:`set_grad_checkpointing`)."""
        return self.grad_checkpointing and self.training
