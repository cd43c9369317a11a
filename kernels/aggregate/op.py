"""``clustervig::max_aggregate`` and its backward: the ops the model calls (see
:mod:`kernels.opdef`). Differentiable in ``x``: the forward keeps the winning neighbour slots
when a gradient will be needed, and the backward routes each gradient to its winning row."""

from __future__ import annotations

import torch
from torch import Tensor

from .._common import INDEX_DTYPE, MAX_NEIGHBORS, OP_DTYPES, check_int, check_tensor
from ..opdef import CheckedKernel, define_op, native_or_reference
from . import reference
from .native import native_max_aggregate

__all__ = ["MAX_AGGREGATE", "MAX_AGGREGATE_BACKWARD", "max_aggregate"]

FORWARD_KERNEL = CheckedKernel.in_folder("aggregate", "MAX_AGGREGATE")
BACKWARD_KERNEL = CheckedKernel.in_folder("aggregate", "MAX_AGGREGATE_BACKWARD")


def _check(x: Tensor, nbr: Tensor, relative: bool, with_argslot: bool) -> None:
    check_tensor("max_aggregate", "x", x, ndim=2, dtypes=OP_DTYPES)
    check_tensor("max_aggregate", "nbr", nbr, ndim=2, dtypes=(INDEX_DTYPE,), device=x.device)
    if nbr.shape[0] != x.shape[0]:
        raise ValueError(
            f"max_aggregate: argument 'nbr' must have x.shape[0] = {x.shape[0]} rows, "
            f"got {nbr.shape[0]}"
        )
    check_int("max_aggregate", "nbr.shape[1]", nbr.shape[1], low=1, high=MAX_NEIGHBORS)


def _fake(x: Tensor, nbr: Tensor, relative: bool, with_argslot: bool) -> tuple[Tensor, Tensor]:
    slot_shape = x.shape if with_argslot else (0,)
    return x.new_empty(x.shape), x.new_empty(slot_shape, dtype=torch.uint8)


def _check_backward(grad: Tensor, nbr: Tensor, argslot: Tensor, relative: bool) -> None:
    if argslot.shape != grad.shape:
        raise RuntimeError(
            "max_aggregate: backward needs the argmax slots; call it with with_argslot=True "
            "(the public max_aggregate() does so whenever x requires grad)"
        )


def _not_deterministic(*args) -> bool:
    # Float atomics sum in a varying order; under torch.use_deterministic_algorithms(True) the
    # reference's scatter_add (deterministic in PyTorch on every device) runs instead.
    return not torch.are_deterministic_algorithms_enabled()


MAX_AGGREGATE_BACKWARD = define_op(
    BACKWARD_KERNEL,
    "(Tensor grad, Tensor nbr, Tensor argslot, bool relative) -> Tensor",
    check=_check_backward,
    fallback=reference.max_aggregate_backward,
    kernel_applies=_not_deterministic,
)


def _setup(ctx, inputs, output) -> None:
    _, nbr, relative, _ = inputs
    _, argslot = output
    ctx.relative = relative
    ctx.save_for_backward(nbr, argslot)


def _backward(ctx, grad_out: Tensor, _grad_argslot):
    nbr, argslot = ctx.saved_tensors
    grad_x = MAX_AGGREGATE_BACKWARD.custom_op(grad_out.contiguous(), nbr, argslot, ctx.relative)
    return grad_x, None, None, None


MAX_AGGREGATE = define_op(
    FORWARD_KERNEL,
    "(Tensor x, Tensor nbr, bool relative, bool with_argslot) -> (Tensor, Tensor)",
    check=_check,
    fallback=native_or_reference(native_max_aggregate, reference.max_aggregate),
    fake=_fake,
    autograd=(_backward, _setup),
)


def max_aggregate(x: Tensor, nbr: Tensor, relative: bool = True) -> Tensor:
    """Max over neighbours, ``(M, C)``: ``max_k x[nbr[v, k]] - x[v]`` (relative) or the plain max.

    Differentiable in ``x``; the argmax slots (uint8) are kept only when ``x`` requires grad.
    See :func:`kernels.aggregate.reference.max_aggregate` for the contract.
    """
    with_argslot = x.requires_grad and torch.is_grad_enabled()
    return MAX_AGGREGATE(x, nbr, relative, with_argslot)[0]
