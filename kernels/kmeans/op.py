"""``clustervig::kmeans``: the op the model calls (see :mod:`kernels.opdef`), and its FLOP formula
for ``torch.utils.flop_counter``. No gradient: the partition is a choice, not a value."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .._common import INDEX_DTYPE, MAX_CLUSTERS, OP_DTYPES, check_int, check_tensor
from ..opdef import CheckedKernel, concrete_sum, define_op, native_or_reference
from . import reference
from .native import native_kmeans

__all__ = ["KMEANS", "batched_kmeans"]

#: One verdict for the three paths: the self-check runs every path the launcher can take here.
KERNEL = CheckedKernel.in_folder(
    "kmeans", "KMEANS", "KMEANS_SPLIT", "KMEANS_RESIDENT", module="launch"
)


def _check(x: Tensor, num_clusters: int, max_iters: int) -> None:
    check_tensor("kmeans", "x", x, ndim=3, dtypes=OP_DTYPES)
    n = x.shape[1]
    check_int("kmeans", "num_clusters", num_clusters, low=1, high=MAX_CLUSTERS)
    if num_clusters > n:
        raise ValueError(
            f"kmeans: argument 'num_clusters' must be in [1, N] with N = {n} nodes, "
            f"got {num_clusters}"
        )
    check_int("kmeans", "max_iters", max_iters, low=1)


def _fake(x: Tensor, num_clusters: int, max_iters: int) -> tuple[Tensor, Tensor, Tensor]:
    B, N, C = x.shape
    return (
        x.new_empty(B, N, dtype=INDEX_DTYPE),
        x.new_empty(B, num_clusters, C),
        x.new_empty(B, dtype=INDEX_DTYPE),
    )


KMEANS = define_op(
    KERNEL,
    "(Tensor x, int num_clusters, int max_iters) -> (Tensor, Tensor, Tensor)",
    fallback=native_or_reference(native_kmeans, reference.kmeans),
    check=_check,
    fake=_fake,
)


def batched_kmeans(
    x: Tensor, num_clusters: int, max_iters: int = 20
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched k-means (no gradient). See :func:`kernels.kmeans.reference.kmeans` for the
    contract.

    x ``(B, N, C)`` -> labels ``(B, N)`` int32, centroids ``(B, kappa, C)``, iterations ``(B,)``.
    """
    return KMEANS(x.detach(), num_clusters, max_iters)


@register_flop_formula(torch.ops.clustervig.kmeans, get_raw=True)
def _kmeans_flops(
    x: Tensor, num_clusters: int, max_iters: int, *args, out_val=None, **kwargs
) -> int:
    """Each pass: distances to the centroids (N x kappa x C) and the segmented mean (same size),
    over the iterations each image ran (read from the output; the cap under fake tensors)."""
    B, N, C = x.shape
    passes = concrete_sum(out_val[2]) if out_val is not None else None
    passes = B * (max_iters + 1) if passes is None else passes + B
    return 2 * 2 * passes * N * num_clusters * C
