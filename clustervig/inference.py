"""The inference form of a model: ``clustervig.deploy(model)``.

A trained model runs faster on a CPU (and exports a smaller graph) after rewrites that do not
change its function:

- every eval-mode batch norm that follows a convolution is folded into that convolution's weight
  and bias (:meth:`clustervig.layers.ConvBN.fuse`, :meth:`ClassifierHead.reparameterize`: timm's
  ``fuse`` / ``reparameterize`` conventions, so ``timm.utils.reparameterize_model`` does the same
  folding), and a distillation head is merged with the classifier (eval returns their mean);
  the local update's batch norm is already one op with its bias and GELU in inference
  (:func:`kernels.segment_norm_gelu`);
- the feature maps are channels-last throughout (``(B, H, W, C)`` in memory), the layout oneDNN's
  1x1 and depthwise convolutions run without reorders and in which a map's nodes ``(B, N, C)``
  are a view, so a DEGC layer's input and output are not copied between layouts;
- on a CPU in float32 the convolutions run with their GELU and residual add inside, on weights
  reordered once into oneDNN's layout (:mod:`clustervig.fused`);
- the model is in eval mode, its parameters frozen (``requires_grad=False``).

The original model (its state dict, its training) is left as it is unless ``inplace=True``. The
inference form's state dict has no batch-norm entries where they were folded: save the original
for training or fine-tuning.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .conventions import BackboneConventions

__all__ = ["deploy", "fuse_modules"]


def fuse_modules(module: nn.Module) -> nn.Module:
    """Replace every child with a ``fuse()`` method by what it returns and call
    ``reparameterize()`` on those that have one, depth first; returns ``module``, changed in
    place (the walk of ``timm.utils.reparameterize_model``)."""
    for name, child in list(module.named_children()):
        if hasattr(child, "fuse"):
            setattr(module, name, child.fuse())
        elif hasattr(child, "reparameterize"):
            child.reparameterize()
        fuse_modules(getattr(module, name))
    return module


def deploy(model: nn.Module, *, inplace: bool = False, channels_last: bool = True) -> nn.Module:
    """The inference form of a ClusterViG, PViG or IViG model (module docstring): batch norms
    folded, channels-last feature maps, eval mode. Its outputs equal the model's in eval mode
    within float rounding.

    Args:
        model: a model of this package (any :class:`BackboneConventions` model).
        inplace: rewrite ``model`` itself instead of a copy.
        channels_last: run the blocks on channels-last maps (the fast layout on CPUs; ``False``
            keeps the standard layout and only folds).
    """
    if not isinstance(model, BackboneConventions):
        raise TypeError(
            "deploy: argument 'model' must be a ClusterViG, PViG or IViG model of this package "
            f"(clustervig.create_model), got {type(model).__name__}"
        )
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    fuse_modules(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.channels_last = bool(channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model
