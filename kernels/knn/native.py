"""The in-partition k-NN in C (``knn.c``, built with the other CPU kernels by
:mod:`kernels.native`): each partition's distances and top-K in one call, partitions spread
over torch's CPU threads."""

from __future__ import annotations

import ctypes

import torch

from .. import native
from .._common import INDEX_DTYPE

__all__ = ["native_partition_knn"]

_i64, _i32, _ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
#: ``cvig_partition_knn(x, M, C, offsets, perm, normalize, first, last, K, out)``
_ARGTYPES = [_ptr, _i64, _i64, _ptr, _ptr, _i32, _i64, _i64, _i32, _ptr]
_at = native.pointer


def native_partition_knn(
    x: torch.Tensor,
    offsets: torch.Tensor,
    k: int,
    out: torch.Tensor | None = None,
    *,
    perm: torch.Tensor | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """:func:`kernels.knn.reference.partition_knn` in C. x ``(M, C)`` on the CPU (computed in
    float32), offsets ``(P + 1,)`` int32 already checked to rise from 0 to M, ``perm`` (M,)
    int32 or None, ``normalize`` -> ``(M, K)`` int32 row indices (written into ``out`` if
    given: contiguous, the tests poison it)."""
    kernel = native.function("cvig_partition_knn", _ARGTYPES, ctypes.c_int)
    M, C = x.shape
    xf = x.detach().to(torch.float32).contiguous()
    offs = offsets.to(INDEX_DTYPE).contiguous()
    rows = None if perm is None else perm.to(INDEX_DTYPE).contiguous()
    out = torch.empty(M, k, dtype=INDEX_DTYPE) if out is None else out
    P = offs.shape[0] - 1
    if M and P:
        work = M * C * (M // P + 1)  # rows x channels x the mean partition size
        native.run_parallel(
            kernel,
            P,
            work,
            lambda lo, hi: (
                _at(xf), M, C, _at(offs), None if rows is None else _at(rows),
                int(normalize), lo, hi, k, _at(out),
            ),
        )  # fmt: skip
    return out
