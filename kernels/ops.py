"""The DEGC ops as ``torch.library`` custom ops: the only kernel entry points the model calls.

Each op validates its arguments, then runs the Triton kernel on CUDA tensors (and on CPU tensors
under the Triton interpreter when the backend is ``triton``, see :func:`kernels.use_backend`),
the compiled CPU kernel on CPU tensors where there is one (k-means, the partition order, k-NN
and the forward of the aggregation, :mod:`kernels.native`), or the pure-torch reference
(``kernels/reference.py``, any device) otherwise: with ``CLUSTERVIG_BACKEND=torch``, and for a
kernel whose self-check failed on this GPU (:mod:`kernels.selfcheck`). No op raises on NaN/Inf
and none reads values back to the host off the CPU: every index output is valid for any input
and NaN propagates into the values.
``register_fake`` gives ``torch.compile`` their output shapes, so a compiled model sees each op
as one graph node; ``permute_rows`` and ``max_aggregate`` carry their gradients.

- ``batched_kmeans``: x (B, N, C) float, kappa, max_iters -> labels (B, N) i32,
  centroids (B, kappa, C), iterations (B,) i32
- ``partition``: labels (B, N) i32, kappa -> perm (M,), inverse (M,), offsets (B*kappa+1,),
  segment (M,), all i32
- ``permute_rows``: x (M, C), index (M,) i32, inverse (M,) i32 -> x[index] (M, C)
- ``partition_knn``: x (M, C) float, offsets i32, K, max_partition_size, perm i32 or None,
  normalize -> nbr (M, K) i32
- ``max_aggregate``: x (M, C) float, nbr (M, K) i32, relative -> out (M, C), argslot (M, C) u8
- ``segment_norm_gelu``: acc (M, O), table (P, O), segment (M,) i32, five (O,) vectors, eps
  -> (M, O): the local update's inference epilogue
- ``center_tokens``: x (B, C, H, W) -> (B, N, C): the nodes, mean-centred per image and channel
- ``gatv2_attention``: source, target (B, kappa, C), att, bias (C,), slope -> (B, kappa, C)
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode
from torch.utils.flop_counter import register_flop_formula

from . import reference
from ._common import (
    INDEX_DTYPE,
    MAX_CLUSTERS,
    MAX_NEIGHBORS,
    OP_DTYPES,
    backend,
    check_int,
    check_tensor,
    recording_launches,
    runs_native,
    runs_triton,
)

__all__ = [
    "batched_kmeans",
    "partition",
    "permute_rows",
    "partition_knn",
    "max_aggregate",
    "segment_norm_gelu",
    "center_tokens",
    "gatv2_attention",
]

_INDEX = (INDEX_DTYPE,)


def _cpu_directly(x: Tensor, differentiable: bool = False) -> bool:
    """Whether a call on ``x`` may skip the custom op and run its CPU implementation directly.

    The dispatcher costs ~20 us a call, a percent or two of a batch-1 CPU forward over five ops
    a layer. Skipping it changes nothing only when nobody looks: a CPU tensor in eager mode with
    a backend other than ``triton``, no gradient to record (``differentiable`` ops), and nothing
    tracing or intercepting the call (torch.compile, torch.jit.trace, a dispatch mode such as
    the FLOP counter or fake tensors).
    """
    return (
        x.device.type == "cpu"
        and not (differentiable and x.requires_grad and torch.is_grad_enabled())
        and backend() != "triton"
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and _get_current_dispatch_mode() is None
    )


# --------------------------------------------------------------------------------------------
# kmeans
# --------------------------------------------------------------------------------------------
def _check_kmeans(x: Tensor, num_clusters: int, max_iters: int) -> None:
    check_tensor("kmeans", "x", x, ndim=3, dtypes=OP_DTYPES)
    n = x.shape[1]
    check_int("kmeans", "num_clusters", num_clusters, low=1, high=MAX_CLUSTERS)
    if num_clusters > n:
        raise ValueError(
            f"kmeans: argument 'num_clusters' must be in [1, N] with N = {n} nodes, "
            f"got {num_clusters}"
        )
    check_int("kmeans", "max_iters", max_iters, low=1)


@torch.library.custom_op("clustervig::kmeans", mutates_args=())
def _kmeans_op(x: Tensor, num_clusters: int, max_iters: int) -> tuple[Tensor, Tensor, Tensor]:
    _check_kmeans(x, num_clusters, max_iters)
    if runs_triton(x, "kmeans"):
        from . import kmeans as kmeans_kernel

        return kmeans_kernel.kmeans(x, num_clusters, max_iters)
    return _kmeans_cpu(x, num_clusters, max_iters)


def _kmeans_cpu(x: Tensor, num_clusters: int, max_iters: int) -> tuple[Tensor, Tensor, Tensor]:
    """The compiled CPU kernel where it runs, else the reference (any device)."""
    if runs_native(x):
        from . import native

        return native.kmeans(x, num_clusters, max_iters)
    return reference.kmeans(x, num_clusters, max_iters)


@_kmeans_op.register_fake
def _(x: Tensor, num_clusters: int, max_iters: int) -> tuple[Tensor, Tensor, Tensor]:
    _check_kmeans(x, num_clusters, max_iters)
    if recording_launches(x, "kmeans"):
        from . import kmeans as kmeans_kernel

        return kmeans_kernel.kmeans(x, num_clusters, max_iters)
    B, N, C = x.shape
    return (
        x.new_empty(B, N, dtype=INDEX_DTYPE),
        x.new_empty(B, num_clusters, C),
        x.new_empty(B, dtype=INDEX_DTYPE),
    )


def batched_kmeans(
    x: Tensor, num_clusters: int, max_iters: int = 20
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched k-means (no gradient). See :func:`kernels.reference.kmeans` for the contract.

    x ``(B, N, C)`` -> labels ``(B, N)`` int32, centroids ``(B, kappa, C)``, iterations ``(B,)``.
    """
    if _cpu_directly(x):
        _check_kmeans(x, num_clusters, max_iters)
        return _kmeans_cpu(x.detach(), num_clusters, max_iters)
    return _kmeans_op(x.detach(), num_clusters, max_iters)


# --------------------------------------------------------------------------------------------
# partition
# --------------------------------------------------------------------------------------------
def _check_partition(labels: Tensor, num_clusters: int) -> None:
    check_tensor("partition", "labels", labels, ndim=2, dtypes=_INDEX)
    check_int("partition", "num_clusters", num_clusters, low=1, high=MAX_CLUSTERS)


@torch.library.custom_op("clustervig::partition", mutates_args=())
def _partition_op(labels: Tensor, num_clusters: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_partition(labels, num_clusters)
    if runs_triton(labels, "partition"):
        from . import permute

        return permute.partition(labels, num_clusters)
    return _partition_cpu(labels, num_clusters)


def _partition_cpu(labels: Tensor, num_clusters: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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
    if runs_native(labels):
        from . import native

        return native.partition(labels, num_clusters)
    return reference.partition(labels, num_clusters)


@_partition_op.register_fake
def _(labels: Tensor, num_clusters: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_partition(labels, num_clusters)
    if recording_launches(labels, "partition"):
        from . import permute

        return permute.partition(labels, num_clusters)
    B, N = labels.shape
    m = B * N
    return (
        labels.new_empty(m),
        labels.new_empty(m),
        labels.new_empty(B * num_clusters + 1),
        labels.new_empty(m),
    )


def partition(labels: Tensor, num_clusters: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Partition order of the nodes: ``(perm, inverse, offsets, segment)``, all int32.

    See :func:`kernels.reference.partition` for the contract.
    """
    if _cpu_directly(labels):
        _check_partition(labels, num_clusters)
        return _partition_cpu(labels, num_clusters)
    return _partition_op(labels, num_clusters)


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


@torch.library.custom_op("clustervig::permute_rows", mutates_args=())
def _permute_rows_op(x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
    _check_permute(x, index, inverse)
    if runs_triton(x, "permute_rows"):
        from . import permute

        return permute.permute_rows(x, index)
    return reference.permute_rows(x, index)


@_permute_rows_op.register_fake
def _(x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
    _check_permute(x, index, inverse)
    if recording_launches(x, "permute_rows"):
        from . import permute

        return permute.permute_rows(x, index)
    return x.new_empty(x.shape)


def _permute_setup(ctx, inputs, output) -> None:
    _, index, inverse = inputs
    ctx.save_for_backward(index, inverse)


def _permute_backward(ctx, grad: Tensor):
    index, inverse = ctx.saved_tensors
    # out[i] = x[index[i]] with index a permutation, so dx[j] = grad[inverse[j]].
    return _permute_rows_op(grad.contiguous(), inverse, index), None, None


_permute_rows_op.register_autograd(_permute_backward, setup_context=_permute_setup)


def permute_rows(x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
    """Rows of ``x (M, C)`` in a new order: ``out[i] = x[index[i]]`` (differentiable).

    ``index`` must be a permutation of ``range(M)`` and ``inverse`` its inverse (both int32, as
    :func:`partition` returns them). Image order -> partition order is
    ``permute_rows(x, perm, inverse)``; back is ``permute_rows(y, inverse, perm)``.
    """
    if _cpu_directly(x, differentiable=True):
        _check_permute(x, index, inverse)
        return reference.permute_rows(x, index)
    return _permute_rows_op(x, index, inverse)


# --------------------------------------------------------------------------------------------
# partition_knn
# --------------------------------------------------------------------------------------------
def _check_knn(
    x: Tensor, offsets: Tensor, k: int, max_partition_size: int, perm: Tensor | None
) -> None:
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


@torch.library.custom_op("clustervig::partition_knn", mutates_args=())
def _partition_knn_op(
    x: Tensor,
    offsets: Tensor,
    k: int,
    max_partition_size: int,
    perm: Tensor | None = None,
    normalize: bool = False,
) -> Tensor:
    _check_knn(x, offsets, k, max_partition_size, perm)
    if runs_triton(x, "partition_knn"):
        from . import knn

        return knn.partition_knn(x, offsets, k, max_partition_size, perm=perm, normalize=normalize)
    return _knn_cpu(x, offsets, k, max_partition_size, perm, normalize)


def _knn_cpu(
    x: Tensor,
    offsets: Tensor,
    k: int,
    max_partition_size: int,
    perm: Tensor | None,
    normalize: bool,
) -> Tensor:
    """The compiled CPU kernel where it runs, else the reference (any device)."""
    if offsets.device.type == "cpu":  # value checks read the offsets: CPU tensors only
        _check_offsets(x, offsets, max_partition_size, perm)
    if runs_native(x):
        from . import native

        return native.partition_knn(x, offsets, k, perm=perm, normalize=normalize)
    return reference.partition_knn(
        x, offsets, k, max_partition_size, perm=perm, normalize=normalize
    )


def _check_offsets(
    x: Tensor, offsets: Tensor, max_partition_size: int, perm: Tensor | None
) -> None:
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


@_partition_knn_op.register_fake
def _(
    x: Tensor,
    offsets: Tensor,
    k: int,
    max_partition_size: int,
    perm: Tensor | None = None,
    normalize: bool = False,
) -> Tensor:
    _check_knn(x, offsets, k, max_partition_size, perm)
    if recording_launches(x, "partition_knn"):
        from . import knn

        return knn.partition_knn(x, offsets, k, max_partition_size, perm=perm, normalize=normalize)
    return x.new_empty(x.shape[0], k, dtype=INDEX_DTYPE)


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
    it sizes the kernel grid without a device sync. With ``perm`` (:func:`partition`'s) the rows
    of x are in image order and so are the output's rows and neighbour ids; ``normalize`` ranks
    the rows scaled to unit length. See :func:`kernels.reference.partition_knn`.
    """
    if _cpu_directly(x):
        _check_knn(x, offsets, k, max_partition_size, perm)
        return _knn_cpu(x.detach(), offsets, k, max_partition_size, perm, normalize)
    return _partition_knn_op(x.detach(), offsets, k, max_partition_size, perm, normalize)


# --------------------------------------------------------------------------------------------
# max_aggregate
# --------------------------------------------------------------------------------------------
def _check_aggregate(x: Tensor, nbr: Tensor) -> None:
    check_tensor("max_aggregate", "x", x, ndim=2, dtypes=OP_DTYPES)
    check_tensor("max_aggregate", "nbr", nbr, ndim=2, dtypes=_INDEX, device=x.device)
    if nbr.shape[0] != x.shape[0]:
        raise ValueError(
            f"max_aggregate: argument 'nbr' must have x.shape[0] = {x.shape[0]} rows, "
            f"got {nbr.shape[0]}"
        )
    check_int("max_aggregate", "nbr.shape[1]", nbr.shape[1], low=1, high=MAX_NEIGHBORS)


@torch.library.custom_op("clustervig::max_aggregate", mutates_args=())
def _max_aggregate_op(
    x: Tensor, nbr: Tensor, relative: bool, with_argslot: bool
) -> tuple[Tensor, Tensor]:
    _check_aggregate(x, nbr)
    if runs_triton(x, "max_aggregate"):
        from . import aggregate

        return aggregate.max_aggregate(x, nbr, relative, with_argslot)
    return _max_aggregate_cpu(x, nbr, relative, with_argslot)


def _max_aggregate_cpu(
    x: Tensor, nbr: Tensor, relative: bool, with_argslot: bool
) -> tuple[Tensor, Tensor]:
    """The compiled CPU kernel where it runs, else the reference (any device)."""
    if runs_native(x):
        from . import native

        return native.max_aggregate(x, nbr, relative, with_argslot)
    return reference.max_aggregate(x, nbr, relative, with_argslot)


@_max_aggregate_op.register_fake
def _(x: Tensor, nbr: Tensor, relative: bool, with_argslot: bool) -> tuple[Tensor, Tensor]:
    _check_aggregate(x, nbr)
    if recording_launches(x, "max_aggregate"):
        from . import aggregate

        return aggregate.max_aggregate(x, nbr, relative, with_argslot)
    slot_shape = x.shape if with_argslot else (0,)
    return x.new_empty(x.shape), x.new_empty(slot_shape, dtype=torch.uint8)


@torch.library.custom_op("clustervig::max_aggregate_backward", mutates_args=())
def _max_aggregate_backward_op(
    grad: Tensor, nbr: Tensor, argslot: Tensor, relative: bool
) -> Tensor:
    if argslot.shape != grad.shape:
        raise RuntimeError(
            "max_aggregate: backward needs the argmax slots; call it with with_argslot=True "
            "(the public max_aggregate() does so whenever x requires grad)"
        )
    # Float atomics sum in a varying order; under torch.use_deterministic_algorithms(True) the
    # reference's scatter_add (deterministic in PyTorch on every device) runs instead.
    deterministic = torch.are_deterministic_algorithms_enabled()
    if not deterministic and runs_triton(grad, "max_aggregate_backward"):
        from . import aggregate

        return aggregate.max_aggregate_backward(grad, nbr, argslot, relative)
    return reference.max_aggregate_backward(grad, nbr, argslot, relative)


@_max_aggregate_backward_op.register_fake
def _(grad: Tensor, nbr: Tensor, argslot: Tensor, relative: bool) -> Tensor:
    return grad.new_empty(grad.shape)


def _aggregate_setup(ctx, inputs, output) -> None:
    _, nbr, relative, _ = inputs
    _, argslot = output
    ctx.relative = relative
    ctx.save_for_backward(nbr, argslot)


def _aggregate_backward(ctx, grad_out: Tensor, _grad_argslot):
    nbr, argslot = ctx.saved_tensors
    grad_x = _max_aggregate_backward_op(grad_out.contiguous(), nbr, argslot, ctx.relative)
    return grad_x, None, None, None


_max_aggregate_op.register_autograd(_aggregate_backward, setup_context=_aggregate_setup)


def max_aggregate(x: Tensor, nbr: Tensor, relative: bool = True) -> Tensor:
    """Max over neighbours, ``(M, C)``: ``max_k x[nbr[v, k]] - x[v]`` (relative) or the plain max.

    Differentiable in ``x``; the argmax slots (uint8) are kept only when ``x`` requires grad.
    """
    if _cpu_directly(x, differentiable=True):
        _check_aggregate(x, nbr)
        return _max_aggregate_cpu(x, nbr, relative, False)[0]
    with_argslot = x.requires_grad and torch.is_grad_enabled()
    return _max_aggregate_op(x, nbr, relative, with_argslot)[0]


# --------------------------------------------------------------------------------------------
# gatv2_attention
# --------------------------------------------------------------------------------------------
def _check_gatv2(source: Tensor, target: Tensor, att: Tensor, bias: Tensor) -> None:
    name = "gatv2_attention"
    check_tensor(name, "source", source, ndim=3, dtypes=OP_DTYPES)
    check_tensor(name, "target", target, ndim=3, dtypes=OP_DTYPES, device=source.device)
    check_tensor(name, "att", att, ndim=1, dtypes=OP_DTYPES, device=source.device)
    check_tensor(name, "bias", bias, ndim=1, dtypes=OP_DTYPES, device=source.device)
    C = source.shape[2]
    if target.shape != source.shape or att.shape[0] != C or bias.shape[0] != C:
        raise ValueError(
            f"{name}: arguments 'target' (B, kappa, C), 'att' and 'bias' (C,) must match "
            f"'source' {tuple(source.shape)}, got {tuple(target.shape)}, {tuple(att.shape)} "
            f"and {tuple(bias.shape)}"
        )
    check_int(name, "kappa", source.shape[1], low=1, high=MAX_CLUSTERS)


@torch.library.custom_op("clustervig::gatv2_attention", mutates_args=())
def _gatv2_attention_op(
    source: Tensor, target: Tensor, att: Tensor, bias: Tensor, negative_slope: float
) -> Tensor:
    _check_gatv2(source, target, att, bias)
    if runs_triton(source, "gatv2_attention"):
        from . import gatv2

        return gatv2.gatv2_attention(source, target, att, bias, negative_slope)
    return reference.gatv2_attention(source, target, att, bias, negative_slope)


@_gatv2_attention_op.register_fake
def _(source: Tensor, target: Tensor, att: Tensor, bias: Tensor, negative_slope: float) -> Tensor:
    _check_gatv2(source, target, att, bias)
    if recording_launches(source, "gatv2_attention"):
        from . import gatv2

        return gatv2.gatv2_attention(source, target, att, bias, negative_slope)
    return source.new_empty(source.shape)


def gatv2_attention(
    source: Tensor, target: Tensor, att: Tensor, bias: Tensor, negative_slope: float
) -> Tensor:
    """GATv2 attention over each image's complete centroid graph, ``(B, kappa, C)``. No
    gradient: the model calls it only when none is needed. See
    :func:`kernels.reference.gatv2_attention`."""
    if _cpu_directly(source):
        _check_gatv2(source, target, att, bias)
        return reference.gatv2_attention(source, target, att, bias, negative_slope)
    return _gatv2_attention_op(source, target, att, bias, negative_slope)


# --------------------------------------------------------------------------------------------
# center_tokens
# --------------------------------------------------------------------------------------------
def _check_center(x: Tensor) -> None:
    check_tensor("center_tokens", "x", x, ndim=4, dtypes=OP_DTYPES)


@torch.library.custom_op("clustervig::center_tokens", mutates_args=())
def _center_tokens_op(x: Tensor) -> Tensor:
    _check_center(x)
    if runs_triton(x, "center_tokens"):
        from . import center

        return center.center_tokens(x)
    return reference.center_tokens(x)


@_center_tokens_op.register_fake
def _(x: Tensor) -> Tensor:
    _check_center(x)
    if recording_launches(x, "center_tokens"):
        from . import center

        return center.center_tokens(x)
    B, C, H, W = x.shape
    return x.new_empty(B, H * W, C)


def _center_setup(ctx, inputs, output) -> None:
    ctx.shape = inputs[0].shape


def _center_backward(ctx, grad: Tensor) -> Tensor:
    # Centring is linear: the gradient is the output gradient centred, transposed back.
    B, C, H, W = ctx.shape
    g = grad - grad.mean(dim=1, keepdim=True)
    return g.transpose(1, 2).reshape(B, C, H, W)


_center_tokens_op.register_autograd(_center_backward, setup_context=_center_setup)


def center_tokens(x: Tensor) -> Tensor:
    """A feature map's nodes, mean-centred per image and channel: ``(B, C, H, W) -> (B, N, C)``,
    differentiable. See :func:`kernels.reference.center_tokens`."""
    if _cpu_directly(x, differentiable=True):
        _check_center(x)
        return reference.center_tokens(x)
    return _center_tokens_op(x)


# --------------------------------------------------------------------------------------------
# segment_norm_gelu (the local update's inference epilogue)
# --------------------------------------------------------------------------------------------
def _check_epilogue(acc: Tensor, table: Tensor, segment: Tensor, vectors: list[Tensor]) -> None:
    name = "segment_norm_gelu"
    check_tensor(name, "acc", acc, ndim=2, dtypes=OP_DTYPES)
    check_tensor(name, "table", table, ndim=2, dtypes=OP_DTYPES, device=acc.device)
    check_tensor(name, "segment", segment, ndim=1, dtypes=_INDEX, device=acc.device)
    if table.shape[1] != acc.shape[1] or segment.shape[0] != acc.shape[0]:
        raise ValueError(
            f"{name}: arguments 'table' (P, O) and 'segment' (M,) must match acc (M, O) = "
            f"{tuple(acc.shape)}, got {tuple(table.shape)} and {tuple(segment.shape)}"
        )
    names = ("bias", "weight", "shift", "running_mean", "running_var")
    for vector_name, t in zip(names, vectors, strict=True):
        check_tensor(name, vector_name, t, ndim=1, dtypes=OP_DTYPES, device=acc.device)
        if t.shape[0] != acc.shape[1]:
            raise ValueError(
                f"{name}: argument '{vector_name}' must have O = {acc.shape[1]} entries, "
                f"got {t.shape[0]}"
            )


@torch.library.custom_op("clustervig::segment_norm_gelu", mutates_args=())
def _segment_norm_gelu_op(
    acc: Tensor,
    table: Tensor,
    segment: Tensor,
    bias: Tensor,
    weight: Tensor,
    shift: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
) -> Tensor:
    vectors = [bias, weight, shift, running_mean, running_var]
    _check_epilogue(acc, table, segment, vectors)
    if runs_triton(acc, "segment_norm_gelu"):
        from . import epilogue

        return epilogue.segment_norm_gelu(acc, table, segment, *vectors, eps)
    return reference.segment_norm_gelu(acc, table, segment, *vectors, eps)


@_segment_norm_gelu_op.register_fake
def _(
    acc: Tensor,
    table: Tensor,
    segment: Tensor,
    bias: Tensor,
    weight: Tensor,
    shift: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
) -> Tensor:
    vectors = [bias, weight, shift, running_mean, running_var]
    _check_epilogue(acc, table, segment, vectors)
    if recording_launches(acc, "segment_norm_gelu"):
        from . import epilogue

        return epilogue.segment_norm_gelu(acc, table, segment, *vectors, eps)
    return acc.new_empty(acc.shape)


def segment_norm_gelu(
    acc: Tensor,
    table: Tensor,
    segment: Tensor,
    bias: Tensor,
    weight: Tensor,
    shift: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
) -> Tensor:
    """``GELU(BN(acc + bias + table[segment]))``, the batch norm with its running statistics
    (inference): ``(M, O)``. No gradient: the model calls it only when none is needed. See
    :func:`kernels.reference.segment_norm_gelu`."""
    args = (acc, table, segment, bias, weight, shift, running_mean, running_var)
    if _cpu_directly(acc):
        _check_epilogue(acc, table, segment, list(args[3:]))
        return reference.segment_norm_gelu(*args, eps)
    return _segment_norm_gelu_op(*args, eps)


# --------------------------------------------------------------------------------------------
# FLOP formulas, so that torch.utils.flop_counter.FlopCounterMode counts the work these ops do.
# They read the real outputs (get_raw): the k-means iterations each image ran and the partition
# sizes. Under fake tensors the k-means count falls back to the iteration cap.
# --------------------------------------------------------------------------------------------
def _concrete_int(t: Tensor) -> int | None:
    try:
        return int(t.sum())
    except Exception:  # fake / meta tensors have no data
        return None


@register_flop_formula(torch.ops.clustervig.kmeans, get_raw=True)
def _kmeans_flops(
    x: Tensor, num_clusters: int, max_iters: int, *args, out_val=None, **kwargs
) -> int:
    B, N, C = x.shape
    passes = _concrete_int(out_val[2]) if out_val is not None else None
    passes = B * (max_iters + 1) if passes is None else passes + B
    # Each pass: distances to the centroids (N x kappa x C) and the segmented mean (same size).
    return 2 * 2 * passes * N * num_clusters * C


@register_flop_formula(torch.ops.clustervig.partition_knn, get_raw=True)
def _partition_knn_flops(x: Tensor, offsets: Tensor, k: int, *args, out_val=None, **kwargs) -> int:
    sizes = (offsets[1:] - offsets[:-1]).to(torch.int64)
    squares = _concrete_int(sizes * sizes)
    if squares is None:  # balanced partitions
        squares = x.shape[0] * x.shape[0] // max(1, offsets.shape[0] - 1)
    return 2 * squares * x.shape[1]
