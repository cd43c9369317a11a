"""The aggregation's forward in C (``aggregate.c``, built with the other CPU kernels by
:mod:`kernels.native`): one pass builds each output row from its K neighbour rows in L1."""

from __future__ import annotations

import ctypes

import torch

from .. import native
from .._common import INDEX_DTYPE

__all__ = ["native_max_aggregate"]

_at = native.pointer


_i64, _i32, _ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
#: ``cvig_max_aggregate(x, M, C, nbr, K, relative, first, last, out, argslot)``
_ARGTYPES = [_ptr, _i64, _i64, _ptr, _i32, _i32, _i64, _i64, _ptr, _ptr]


def native_max_aggregate(
    x: torch.Tensor, nbr: torch.Tensor, relative: bool, with_argslot: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`kernels.aggregate.reference.max_aggregate` in C. x ``(M, C)`` on the CPU
    (16-bit inputs are widened to float32: their maximum is exact, and ``best - x`` is rounded
    once, as the reference does), nbr ``(M, K)`` int32 -> out ``(M, C)`` in x's dtype,
    argslot ``(M, C)`` uint8 (empty unless ``with_argslot``)."""
    kernel = native.function("cvig_max_aggregate", _ARGTYPES, None)
    M, C = x.shape
    K = nbr.shape[1]
    xf = x.detach().to(torch.float32).contiguous()
    index = nbr.to(INDEX_DTYPE).contiguous()
    out = torch.empty(M, C, dtype=torch.float32)
    argslot = (
        torch.empty(M, C, dtype=torch.uint8) if with_argslot else torch.empty(0, dtype=torch.uint8)
    )
    if M and C:
        native.run_parallel(
            kernel,
            M,
            M * K * C // 4,  # a gather and a compare are ~4x lighter than a multiply-add pass
            lambda lo, hi: (
                _at(xf), M, C, _at(index), K, int(relative), lo, hi, _at(out),
                _at(argslot) if with_argslot else None,
            ),
        )  # fmt: skip
    return out.to(x.dtype), argslot
