"""``clustervig::center_tokens``: the op the model calls (see :mod:`kernels.opdef`);
differentiable (centring is linear)."""

from __future__ import annotations

from torch import Tensor

from .._common import OP_DTYPES, check_tensor
from ..opdef import CheckedKernel, define_op
from . import reference

__all__ = ["CENTER_TOKENS", "center_tokens"]

KERNEL = CheckedKernel.in_folder("center", "CENTER_TOKENS")


def _check(x: Tensor) -> None:
    check_tensor("center_tokens", "x", x, ndim=4, dtypes=OP_DTYPES)


def _fake(x: Tensor) -> Tensor:
    B, C, H, W = x.shape
    return x.new_empty(B, H * W, C)


def _setup(ctx, inputs, output) -> None:
    ctx.shape = inputs[0].shape


def _backward(ctx, grad: Tensor) -> Tensor:
    # Centring is linear: the gradient is the output gradient centred, transposed back.
    B, C, H, W = ctx.shape
    g = grad - grad.mean(dim=1, keepdim=True)
    return g.transpose(1, 2).reshape(B, C, H, W)


CENTER_TOKENS = define_op(
    KERNEL,
    "(Tensor x) -> Tensor",
    check=_check,
    fallback=reference.center_tokens,
    fake=_fake,
    autograd=(_backward, _setup),
)


def center_tokens(x: Tensor) -> Tensor:
    """A feature map's nodes, mean-centred per image and channel: ``(B, C, H, W) -> (B, N, C)``,
    differentiable. See :func:`kernels.center.reference.center_tokens`."""
    return CENTER_TOKENS(x)
