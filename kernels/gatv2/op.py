"""``clustervig::gatv2_attention``: the op the model calls (see :mod:`kernels.opdef`). No
gradient: the model calls it only when none is needed."""

from __future__ import annotations

from torch import Tensor

from .._common import MAX_CLUSTERS, OP_DTYPES, check_int, check_tensor
from ..opdef import CheckedKernel, define_op
from . import reference

__all__ = ["GATV2_ATTENTION", "gatv2_attention"]

KERNEL = CheckedKernel.in_folder("gatv2", "GATV2_ATTENTION")


def _check(source: Tensor, target: Tensor, att: Tensor, bias: Tensor, negative_slope) -> None:
    name = "gatv2_attention"
    check_tensor(name, "source", source, ndim=3, dtypes=OP_DTYPES)
    for arg, t, ndim in (("target", target, 3), ("att", att, 1), ("bias", bias, 1)):
        check_tensor(name, arg, t, ndim=ndim, dtypes=OP_DTYPES, device=source.device)
    C = source.shape[2]
    if target.shape != source.shape or att.shape[0] != C or bias.shape[0] != C:
        raise ValueError(
            f"{name}: arguments 'target' (B, kappa, C), 'att' and 'bias' (C,) must match "
            f"'source' {tuple(source.shape)}, got {tuple(target.shape)}, {tuple(att.shape)} "
            f"and {tuple(bias.shape)}"
        )
    check_int(name, "kappa", source.shape[1], low=1, high=MAX_CLUSTERS)


GATV2_ATTENTION = define_op(
    KERNEL,
    "(Tensor source, Tensor target, Tensor att, Tensor bias, float negative_slope) -> Tensor",
    check=_check,
    fallback=reference.gatv2_attention,
)


def gatv2_attention(
    source: Tensor, target: Tensor, att: Tensor, bias: Tensor, negative_slope: float
) -> Tensor:
    """GATv2 attention over each image's complete centroid graph, ``(B, kappa, C)``. No
    gradient: the model calls it only when none is needed. See
    :func:`kernels.gatv2.reference.gatv2_attention`."""
    return GATV2_ATTENTION(source, target, att, bias, negative_slope)
