"""``clustervig::segment_norm_gelu``: the local update's inference epilogue as the op the model
calls (see :mod:`kernels.opdef`). No gradient: the model calls it only when none is needed."""

from __future__ import annotations

from torch import Tensor

from .._common import INDEX_DTYPE, OP_DTYPES, check_tensor
from ..opdef import CheckedKernel, define_op
from . import reference

__all__ = ["SEGMENT_NORM_GELU", "segment_norm_gelu"]

KERNEL = CheckedKernel.in_folder("epilogue", "SEGMENT_NORM_GELU")


def _check(acc: Tensor, table: Tensor, segment: Tensor, norm: Tensor, eps) -> None:
    name = "segment_norm_gelu"
    check_tensor(name, "acc", acc, ndim=2, dtypes=OP_DTYPES)
    check_tensor(name, "table", table, ndim=2, dtypes=OP_DTYPES, device=acc.device)
    check_tensor(name, "segment", segment, ndim=1, dtypes=(INDEX_DTYPE,), device=acc.device)
    check_tensor(name, "norm", norm, ndim=2, dtypes=OP_DTYPES, device=acc.device)
    if table.shape[1] != acc.shape[1] or segment.shape[0] != acc.shape[0]:
        raise ValueError(
            f"{name}: arguments 'table' (P, O) and 'segment' (M,) must match acc (M, O) = "
            f"{tuple(acc.shape)}, got {tuple(table.shape)} and {tuple(segment.shape)}"
        )
    if tuple(norm.shape) != (5, acc.shape[1]):
        raise ValueError(
            f"{name}: argument 'norm' must be (5, O) = (5, {acc.shape[1]}) (bias, weight, "
            f"shift, running_mean, running_var stacked), got {tuple(norm.shape)}"
        )


SEGMENT_NORM_GELU = define_op(
    KERNEL,
    "(Tensor acc, Tensor table, Tensor segment, Tensor norm, float eps) -> Tensor",
    fallback=reference.segment_norm_gelu,
    check=_check,
)


def segment_norm_gelu(
    acc: Tensor, table: Tensor, segment: Tensor, norm: Tensor, eps: float
) -> Tensor:
    """``GELU(BN(acc + bias + table[segment]))``, the batch norm with its running statistics
    (inference): ``(M, O)``. ``norm (5, O)`` stacks the linear bias, the batch norm's weight and
    bias, its running mean and running variance. No gradient: the model calls it only when
    none is needed. See :func:`kernels.epilogue.reference.segment_norm_gelu`."""
    return SEGMENT_NORM_GELU(acc, table, segment, norm, eps)
