"""``clustervig::partition`` and ``clustervig::permute_rows``: the ops the model calls (see
:mod:`kernels.opdef`). ``permute_rows`` carries its gradient: the inverse permutation."""

from __future__ import annotations

from torch import Tensor

from .._common import INDEX_DTYPE, MAX_CLUSTERS, OP_DTYPES, check_int, check_tensor
from ..opdef import CheckedKernel, define_op, native_or_reference
from . import reference
from .native import native_partition

__all__ = ["PARTITION", "PERMUTE_ROWS", "partition", "permute_rows"]

_INDEX = (INDEX_DTYPE,)

PARTITION_KERNEL = CheckedKernel.in_folder("partition", "PARTITION", dtypes=(INDEX_DTYPE,))
PERMUTE_ROWS_KERNEL = CheckedKernel.in_folder("partition", "PERMUTE_ROWS")


# --------------------------------------------------------------------------------------------
# partition
# --------------------------------------------------------------------------------------------
def _check_partition(labels: Tensor, num_clusters: int) -> None:
    check_tensor("partition", "labels", labels, ndim=2, dtypes=_INDEX)
    check_int("partition", "num_clusters", num_clusters, low=1, high=MAX_CLUSTERS)


_native_or_reference = native_or_reference(native_partition, reference.partition)


def _partition_fallback(labels: Tensor, num_clusters: int):
    """The compiled CPU kernel where it runs, else the reference (any device)."""
    # The range check reads values back, so it runs on CPU tensors only; elsewhere out-of-range
    # labels are clamped (kernel and reference alike) and never index out of bounds.
    if (
        labels.device.type == "cpu"
        and labels.numel()
        and (int(labels.min()) < 0 or int(labels.max()) >= num_clusters)
    ):
        raise ValueError(
            f"partition: argument 'labels' must hold values in [0, {num_clusters}), got "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return _native_or_reference(labels, num_clusters)


def _partition_fake(labels: Tensor, num_clusters: int):
    B, N = labels.shape
    m = B * N
    return (
        labels.new_empty(m),
        labels.new_empty(m),
        labels.new_empty(B * num_clusters + 1),
        labels.new_empty(m),
    )


PARTITION = define_op(
    PARTITION_KERNEL,
    "(Tensor labels, int num_clusters) -> (Tensor, Tensor, Tensor, Tensor)",
    check=_check_partition,
    fallback=_partition_fallback,
    fake=_partition_fake,
)


def partition(labels: Tensor, num_clusters: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Partition order of the nodes: ``(perm, inverse, offsets, segment)``, all int32.

    See :func:`kernels.partition.reference.partition` for the contract.
    """
    return PARTITION(labels, num_clusters)


# --------------------------------------------------------------------------------------------
# permute_rows
# --------------------------------------------------------------------------------------------
def _check_permute(x: Tensor, index: Tensor, inverse: Tensor) -> None:
    check_tensor("permute_rows", "x", x, ndim=2, dtypes=OP_DTYPES)
    check_tensor("permute_rows", "index", index, ndim=1, dtypes=_INDEX, device=x.device)
    check_tensor("permute_rows", "inverse", inverse, ndim=1, dtypes=_INDEX, device=x.device)
    if index.shape[0] != x.shape[0] or inverse.shape[0] != x.shape[0]:
        raise ValueError(
            f"permute_rows: arguments 'index' and 'inverse' must have x.shape[0] = {x.shape[0]} "
            f"entries, got {index.shape[0]} and {inverse.shape[0]}"
        )


def _permute_setup(ctx, inputs, output) -> None:
    _, index, inverse = inputs
    ctx.save_for_backward(index, inverse)


def _permute_backward(ctx, grad: Tensor):
    index, inverse = ctx.saved_tensors
    # out[i] = x[index[i]] with index a permutation, so dx[j] = grad[inverse[j]].
    return PERMUTE_ROWS.custom_op(grad.contiguous(), inverse, index), None, None


PERMUTE_ROWS = define_op(
    PERMUTE_ROWS_KERNEL,
    "(Tensor x, Tensor index, Tensor inverse) -> Tensor",
    check=_check_permute,
    fallback=lambda x, index, inverse: reference.permute_rows(x, index),
    autograd=(_permute_backward, _permute_setup),
)


def permute_rows(x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
    """Rows of ``x (M, C)`` in a new order: ``out[i] = x[index[i]]`` (differentiable).

    ``index`` must be a permutation of ``range(M)`` and ``inverse`` its inverse (both int32, as
    :func:`partition` returns them). Image order -> partition order is
    ``permute_rows(x, perm, inverse)``; back is ``permute_rows(y, inverse, perm)``.
    """
    return PERMUTE_ROWS(x, index, inverse)
