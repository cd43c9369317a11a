"""The partition order in C (``partition.c``, built with the other CPU kernels by
:mod:`kernels.native`): one counting pass and one placing pass per image."""

from __future__ import annotations

import ctypes

import torch

from .. import native
from .._common import INDEX_DTYPE

__all__ = ["native_partition"]

_i64, _i32, _ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
#: ``cvig_partition(labels, N, kappa, first, last, counts, perm, inverse, offsets, segment)``
_ARGTYPES = [_ptr, _i64, _i32, _i64, _i64, _ptr, _ptr, _ptr, _ptr, _ptr]
_at = native.pointer


def native_partition(
    labels: torch.Tensor, num_clusters: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`kernels.partition.reference.partition` in C: labels ``(B, N)`` int32 on the CPU ->
    ``(perm, inverse, offsets, segment)``, all int32."""
    kernel = native.function("cvig_partition", _ARGTYPES, None)
    B, N = labels.shape
    lab = labels.to(INDEX_DTYPE).contiguous()
    perm, inverse, segment = (torch.empty(B * N, dtype=INDEX_DTYPE) for _ in range(3))
    offsets = torch.empty(B * num_clusters + 1, dtype=INDEX_DTYPE)
    offsets[-1] = B * N
    counts = torch.empty(num_clusters, dtype=torch.int64)
    if B:
        kernel(
            _at(lab), N, num_clusters, 0, B, _at(counts),
            _at(perm), _at(inverse), _at(offsets), _at(segment),
        )  # fmt: skip
    return perm, inverse, offsets, segment
