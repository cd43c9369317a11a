"""Batched k-means in C (``kmeans.c``, built with the other CPU kernels by :mod:`kernels.native`):
the Lloyd loop of each image in one call, images spread over torch's CPU threads."""

from __future__ import annotations

import ctypes

import torch

from .. import native
from .._common import INDEX_DTYPE
from .reference import kmeans_init_index

__all__ = ["native_kmeans"]

_i64, _i32, _ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
#: ``cvig_kmeans(x, N, C, kappa, max_iters, init, first, last, labels, centroids, iterations)``
_ARGTYPES = [_ptr, _i64, _i64, _i32, _i32, _ptr, _i64, _i64, _ptr, _ptr, _ptr]
_at = native.pointer


def native_kmeans(
    x: torch.Tensor,
    num_clusters: int,
    max_iters: int,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`kernels.kmeans.reference.kmeans` in C. x ``(B, N, C)`` on the CPU (any float dtype but
    float64; computed in float32) -> labels ``(B, N)`` int32, centroids ``(B, kappa, C)`` in
    x's dtype, iterations ``(B,)`` int32. ``out``: contiguous ``(labels, iterations)`` to write
    into (the tests poison them). Arguments are assumed checked (``kernels/kmeans/op.py``)."""
    kernel = native.function("cvig_kmeans", _ARGTYPES, ctypes.c_int)
    B, N, C = x.shape
    xf = x.detach().to(torch.float32).contiguous()
    if out is None:
        out = (torch.empty(B, N, dtype=INDEX_DTYPE), torch.empty(B, dtype=INDEX_DTYPE))
    labels, iterations = out
    centroids = torch.empty(B, num_clusters, C, dtype=torch.float32)
    init = kmeans_init_index(N, num_clusters).contiguous()
    if B:
        work = B * N * C * num_clusters * 8  # ~8 iterations of assignment and mean
        native.run_parallel(
            kernel,
            B,
            work,
            lambda lo, hi: (
                _at(xf), N, C, num_clusters, max_iters, _at(init), lo, hi,
                _at(labels), _at(centroids), _at(iterations),
            ),
        )  # fmt: skip
    return labels, centroids.to(x.dtype), iterations
