"""``clustervig::partition_knn``: the op the model calls (see :mod:`kernels.opdef`), and its FLOP
formula for ``torch.utils.flop_counter``. No gradient (a graph is a choice, not a value)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .._common import INDEX_DTYPE, MAX_NEIGHBORS, OP_DTYPES, check_int, check_tensor
from ..backend import runs_native
from ..opdef import CheckedKernel, concrete_sum, define_op
from . import reference
from .native import native_partition_knn

__all__ = ["PARTITION_KNN", "partition_knn"]

_INDEX = (INDEX_DTYPE,)

KERNEL = CheckedKernel.in_folder("knn", "PARTITION_KNN")


def _check(x, offsets, k, max_partition_size, perm, normalize) -> None:
    check_tensor("partition_knn", "x", x, ndim=2, dtypes=OP_DTYPES)
    check_tensor("partition_knn", "offsets", offsets, ndim=1, dtypes=_INDEX, device=x.device)
    if offsets.shape[0] < 1:
        raise ValueError(
            "partition_knn: argument 'offsets' must have at least 1 entry (P + 1 for P "
            f"partitions), got {offsets.shape[0]}"
        )
    check_int("partition_knn", "k", k, low=1, high=MAX_NEIGHBORS)
    check_int("partition_knn", "max_partition_size", max_partition_size, low=1)
    if perm is not None:
        check_tensor("partition_knn", "perm", perm, ndim=1, dtypes=_INDEX, device=x.device)
        if perm.shape[0] != x.shape[0]:
            raise ValueError(
                f"partition_knn: argument 'perm' must have x.shape[0] = {x.shape[0]} entries, "
                f"got {perm.shape[0]}"
            )


def _check_offsets(x: Tensor, offsets: Tensor, max_partition_size: int, perm) -> None:
    """Value checks of the partition boundaries (they read the values: CPU tensors only)."""
    sizes = offsets[1:] - offsets[:-1]
    if int(offsets[0]) != 0 or int(offsets[-1]) != x.shape[0] or bool((sizes < 0).any()):
        raise ValueError(
            "partition_knn: argument 'offsets' must rise from 0 to x.shape[0] = "
            f"{x.shape[0]}, got [{int(offsets[0])} .. {int(offsets[-1])}]"
        )
    if sizes.numel() and int(sizes.max()) > max_partition_size:
        raise ValueError(
            f"partition_knn: a partition has {int(sizes.max())} nodes, more than "
            f"'max_partition_size' = {max_partition_size}"
        )
    if perm is not None and perm.numel():
        if int(perm.min()) < 0 or int(perm.max()) >= x.shape[0]:
            raise ValueError(
                f"partition_knn: argument 'perm' must hold rows of x in [0, {x.shape[0]}), got "
                f"[{int(perm.min())} .. {int(perm.max())}]"
            )


def _fallback(x, offsets, k, max_partition_size, perm, normalize) -> Tensor:
    """The compiled CPU kernel where it runs, else the reference (any device)."""
    if offsets.device.type == "cpu":
        _check_offsets(x, offsets, max_partition_size, perm)
    if runs_native(x):
        return native_partition_knn(x, offsets, k, perm=perm, normalize=normalize)
    return reference.partition_knn(
        x, offsets, k, max_partition_size, perm=perm, normalize=normalize
    )


PARTITION_KNN = define_op(
    KERNEL,
    "(Tensor x, Tensor offsets, int k, int max_partition_size, Tensor? perm=None, "
    "bool normalize=False) -> Tensor",
    check=_check,
    fallback=_fallback,
    fake=lambda x, offsets, k, *rest: x.new_empty(x.shape[0], k, dtype=INDEX_DTYPE),
)


def partition_knn(
    x: Tensor,
    offsets: Tensor,
    k: int,
    max_partition_size: int,
    *,
    perm: Tensor | None = None,
    normalize: bool = False,
) -> Tensor:
    """K nearest neighbours of every row inside its partition: ``(M, K)`` int32 (no gradient).

    ``max_partition_size`` bounds every partition's size (N, the nodes per image, in the model);
    it sizes the kernel grid without a device sync. With ``perm`` (:func:`kernels.partition`'s)
    the rows of x are in image order and so are the output's rows and neighbour ids;
    ``normalize`` ranks the rows scaled to unit length. See
    :func:`kernels.knn.reference.partition_knn`.
    """
    return PARTITION_KNN(x.detach(), offsets, k, max_partition_size, perm, normalize)


@register_flop_formula(torch.ops.clustervig.partition_knn, get_raw=True)
def _partition_knn_flops(x: Tensor, offsets: Tensor, k: int, *args, out_val=None, **kwargs) -> int:
    """The distances of every partition's rows to each other: ``2 sum_p s_p^2 C`` (balanced
    partitions under fake tensors, which have no sizes to read)."""
    sizes = (offsets[1:] - offsets[:-1]).to(torch.int64)
    squares = concrete_sum(sizes * sizes)
    if squares is None:  # balanced partitions
        squares = x.shape[0] * x.shape[0] // max(1, offsets.shape[0] - 1)
    return 2 * squares * x.shape[1]
