"""PyTorch reference of the aggregation: the contract of its kernels, the CPU path of the model
and the oracle of the tests. See :mod:`kernels.reference` for the conventions shared by every
reference (shapes, precision, ties)."""

from __future__ import annotations

import torch

from .._common import SINGLE_THREAD_ROWS, one_cpu_thread

__all__ = ["max_aggregate", "max_aggregate_backward"]


def max_aggregate(
    x: torch.Tensor, nbr: torch.Tensor, relative: bool = True, with_argslot: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over the neighbours of every node, optionally relative to the node (MRConv).

    Args:
        x: ``(M, C)`` float features.
        nbr: ``(M, K)`` int row indices into ``x``.
        relative: ``True`` -> ``out[v] = max_k x[nbr[v, k]] - x[v]``; ``False`` -> the plain max.
        with_argslot: also return the winning slots (else an empty tensor).

    Returns:
        out ``(M, C)`` in ``x.dtype``; argslot ``(M, C)`` uint8: the neighbour slot k that won
        channel c (the first slot among equal maxima), saved for the backward pass.

    As in the kernel, ties keep the first slot and a NaN beats any number (the first NaN slot
    wins), so NaN propagates. Indices are clamped into ``[0, M)``.
    """
    M, C = x.shape
    index = nbr.long().clamp(0, max(M - 1, 0))  # never outside x (the kernel's rule)
    if not with_argslot:
        # One neighbour slot at a time: a gather and a running max of (M, C) each, where the
        # (M, K, C) gather of every slot at once outgrows the caches (b=32: ~10x slower). The
        # running max lets NaN win, as the kernel does. One thread for small batches (see
        # SINGLE_THREAD_ROWS).
        with one_cpu_thread(x, M <= SINGLE_THREAD_ROWS):
            slots = index.t().contiguous()  # (K, M)
            best = x.index_select(0, slots[0])
            for rows in slots[1:]:
                torch.maximum(best, x.index_select(0, rows), out=best)
            return _relative(best, x) if relative else best, x.new_empty(0, dtype=torch.uint8)
    # With the winning slots: torch.max over the slots returns the first slot among equal
    # maxima and lets NaN win (its first slot), the kernel's rule. Rows in chunks whose
    # (rows, K, C) gather stays in cache.
    best = torch.empty_like(x)
    slot = torch.empty(M, C, dtype=torch.int64, device=x.device)
    chunk = max(1, (1 << 19) // max(1, index.shape[1] * C))
    for lo in range(0, M, chunk):
        rows = index[lo : lo + chunk]
        gathered = x.index_select(0, rows.reshape(-1)).view(*rows.shape, C)  # (chunk, K, C)
        torch.max(gathered, 1, out=(best[lo : lo + chunk], slot[lo : lo + chunk]))
    return _relative(best, x) if relative else best, slot.to(torch.uint8)


def _relative(best: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``best - x`` computed as the kernel does: in float32 for 16-bit inputs, then rounded."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return (best.float() - x.float()).to(x.dtype)
    return best - x


def max_aggregate_backward(
    grad: torch.Tensor, nbr: torch.Tensor, argslot: torch.Tensor, relative: bool = True
) -> torch.Tensor:
    """Gradient of :func:`max_aggregate` w.r.t. ``x``: route ``grad`` to the winning neighbours.

    ``grad_x[nbr[v, argslot[v, c]], c] += grad[v, c]``; if relative also
    ``grad_x[v, c] -= grad[v, c]``.
    Accumulates in float64, returns ``grad.dtype``.
    """
    M, C = grad.shape
    slot = argslot.long().clamp(max=nbr.shape[1] - 1)
    source = torch.gather(nbr.long(), 1, slot).clamp(0, max(M - 1, 0))  # (M, C) winning rows
    g = grad.to(torch.float64)
    grad_x = torch.zeros(M, C, dtype=torch.float64, device=grad.device)
    grad_x.scatter_add_(0, source, g)
    if relative:
        grad_x -= g
    return grad_x.to(grad.dtype)
