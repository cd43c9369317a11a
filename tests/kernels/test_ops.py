"""The custom ops: opcheck, backends, gradients, validation, and torch.compile."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import reference
from kernels.aggregate import MAX_AGGREGATE
from kernels.epilogue import SEGMENT_NORM_GELU
from kernels.kmeans import KMEANS
from kernels.knn import PARTITION_KNN
from kernels.partition import PARTITION, PERMUTE_ROWS
from tests.conftest import HAS_CUDA

BACKENDS = ["reference", "triton", "native"]


def _partitioned(B=2, N=30, C=12, kappa=3, dtype=torch.float32, device="cpu"):
    x = torch.randn(B, N, C, dtype=dtype, device=device)
    labels, _, _ = reference.kmeans(x.cpu().float(), kappa)
    perm, inverse, offsets, _ = reference.partition(labels, kappa)
    return x, labels.to(device), perm.to(device), inverse.to(device), offsets.to(device)


def _op_args(device="cpu"):
    x, labels, perm, inverse, offsets = _partitioned(device=device)
    rows = x.reshape(-1, x.shape[-1])
    nbr = reference.partition_knn(rows.cpu(), offsets.cpu(), 5).to(device)
    return {
        "kmeans": (KMEANS.custom_op, (x, 3, 20)),
        "partition": (PARTITION.custom_op, (labels, 3)),
        "permute_rows": (PERMUTE_ROWS.custom_op, (rows.clone().requires_grad_(), perm, inverse)),
        "partition_knn": (PARTITION_KNN.custom_op, (rows, offsets, 5, 30)),
        "partition_knn_gathered": (PARTITION_KNN.custom_op, (rows, offsets, 5, 30, perm, True)),
        "max_aggregate": (
            MAX_AGGREGATE.custom_op,
            (rows.clone().requires_grad_(), nbr, True, True),
        ),
        "segment_norm_gelu": (
            SEGMENT_NORM_GELU.custom_op,
            (
                rows,
                torch.randn(6, 12, device=device),
                perm % 6,
                torch.rand(5, 12, device=device),
                1e-5,
            ),
        ),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "name",
    [
        "kmeans",
        "partition",
        "permute_rows",
        "partition_knn",
        "partition_knn_gathered",
        "max_aggregate",
        "segment_norm_gelu",
    ],
)
def test_opcheck(name, backend):
    op, args = _op_args()[name]
    with kernels.use_backend(backend):
        torch.library.opcheck(op, args)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize(
    "name", ["kmeans", "partition", "permute_rows", "partition_knn", "max_aggregate"]
)
def test_opcheck_cuda(name):
    op, args = _op_args("cuda")[name]
    torch.library.opcheck(op, args)


def test_backends_agree_through_the_ops():
    x, labels, perm, inverse, offsets = _partitioned()
    results = {}
    for backend in BACKENDS:
        with kernels.use_backend(backend):
            labels, _, iterations = kernels.batched_kmeans(x, 3)
            p = kernels.partition(labels, 3)
            rows = kernels.permute_rows(x.reshape(-1, 12), p[0], p[1])
            nbr = kernels.partition_knn(rows, p[2], 5, 30)
            results[backend] = (labels, iterations, *p, rows, nbr, kernels.max_aggregate(rows, nbr))
    for backend in BACKENDS[1:]:
        for a, b in zip(results["reference"], results[backend], strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------
def test_gradcheck_reference_float64():
    _, _, perm, inverse, offsets = _partitioned()
    x = torch.randn(60, 4, dtype=torch.float64, requires_grad=True)
    nbr = reference.partition_knn(x.detach(), offsets, 5)
    torch.autograd.gradcheck(lambda t: kernels.permute_rows(t, perm, inverse), (x,))
    for relative in (True, False):
        torch.autograd.gradcheck(lambda t: kernels.max_aggregate(t, nbr, relative), (x,))


@pytest.mark.filterwarnings("ignore:Input #0 requires gradient and is not a double")
@pytest.mark.parametrize("relative", [True, False])
def test_gradcheck_triton_backward_under_the_interpreter(relative):
    """float32 through the Triton kernels: the op is piecewise linear, so central differences
    are exact up to float32 rounding of eps-sized steps; tolerances are set for that."""
    torch.manual_seed(3)
    x = torch.randn(10, 6, requires_grad=True)
    nbr = torch.randint(0, 10, (10, 3), dtype=torch.int32)
    perm = torch.randperm(10, dtype=torch.int32)
    inverse = torch.argsort(perm).to(torch.int32)
    with kernels.use_backend("triton"):
        torch.autograd.gradcheck(
            lambda t: kernels.max_aggregate(t, nbr, relative), (x,), eps=1e-3, atol=5e-3, rtol=5e-3
        )
        torch.autograd.gradcheck(
            lambda t: kernels.permute_rows(t, perm, inverse), (x,), eps=1e-3, atol=5e-3, rtol=5e-3
        )


def test_backward_without_saved_slots_raises_clearly():
    x = torch.randn(5, 3, requires_grad=True)
    nbr = torch.zeros(5, 2, dtype=torch.int32)
    out, _ = MAX_AGGREGATE.custom_op(x, nbr, True, False)
    with pytest.raises(RuntimeError, match="with_argslot"):
        out.sum().backward()


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _knn(k=2, offsets=None, max_partition_size=6, perm=None):
    """partition_knn of 6 rows in one partition, with one argument made wrong."""
    offsets = torch.tensor([0, 6], dtype=torch.int32) if offsets is None else offsets
    return kernels.partition_knn(torch.randn(6, 2), offsets, k, max_partition_size, perm=perm)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: kernels.batched_kmeans(torch.randn(10, 4), 2), "'x' must have 3 dimensions"),
        (lambda: kernels.batched_kmeans(torch.randn(1, 10, 4).int(), 2), "'x' must have dtype"),
        (
            lambda: kernels.batched_kmeans(torch.randn(1, 10, 4), 11),
            "'num_clusters' must be in \\[1, N\\]",
        ),
        (lambda: kernels.batched_kmeans(torch.randn(1, 10, 4), 0), "'num_clusters'"),
        (lambda: kernels.batched_kmeans(torch.randn(1, 10, 4), 2, 0), "'max_iters'"),
        (
            lambda: kernels.partition(torch.zeros(2, 5, dtype=torch.int64), 2),
            "'labels' must have dtype",
        ),
        (
            lambda: kernels.partition(torch.full((2, 5), 3, dtype=torch.int32), 2),
            "'labels' must hold",
        ),
        (
            lambda: kernels.permute_rows(
                torch.randn(4, 2),
                torch.arange(3, dtype=torch.int32),
                torch.arange(4, dtype=torch.int32),
            ),
            "'index' and 'inverse'",
        ),
        (lambda: _knn(k=33), "'k'"),
        (lambda: _knn(k=0), "'k'"),
        (lambda: _knn(offsets=torch.tensor([0, 5], dtype=torch.int32)), "'offsets'"),
        (lambda: _knn(max_partition_size=4), "max_partition_size"),
        (lambda: _knn(offsets=torch.tensor([0, 6])), "'offsets' must have dtype"),
        (
            lambda: _knn(perm=torch.arange(5, dtype=torch.int32)),
            "'perm' must have x.shape\\[0\\] = 6",
        ),
        (
            lambda: _knn(perm=torch.arange(1, 7, dtype=torch.int32)),
            "'perm' must hold rows of x in \\[0, 6\\)",
        ),
        (
            lambda: kernels.max_aggregate(torch.randn(6, 2), torch.zeros(5, 2, dtype=torch.int32)),
            "'nbr'",
        ),
        (
            lambda: kernels.max_aggregate(torch.randn(6, 2), torch.zeros(6, 40, dtype=torch.int32)),
            "nbr.shape\\[1\\]",
        ),
    ],
)
def test_bad_arguments_raise_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_float64_on_cpu_runs_the_reference_even_with_the_triton_backend():
    x = torch.randn(2, 20, 4, dtype=torch.float64)
    with kernels.use_backend("triton"):
        labels, centroids, _ = kernels.batched_kmeans(x, 3)
    assert centroids.dtype == torch.float64
    assert torch.equal(labels, reference.kmeans(x, 3)[0])


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="'name'"):
        with kernels.use_backend("cuda"):
            pass


# --------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_degc_compiles_fullgraph_with_the_ops(backend):
    from clustervig.degc import DEGC

    torch._dynamo.reset()
    layer = DEGC(8, k=4, num_clusters=3).eval()
    x = torch.randn(2, 8, 5, 5)
    with kernels.use_backend(backend), torch.no_grad():
        eager = layer(x)
        compiled = torch.compile(layer, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_compiled_training_step_has_gradients():
    from clustervig.degc import DEGC

    torch._dynamo.reset()
    layer = DEGC(6, k=3, num_clusters=2)
    x = torch.randn(2, 6, 4, 4, requires_grad=True)
    torch.compile(layer, fullgraph=True)(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_deterministic_mode_takes_the_reference_backward(monkeypatch):
    """Float atomics add in a varying order; torch.use_deterministic_algorithms(True) gets the
    reference's deterministic scatter instead of the atomic kernel."""
    from kernels.aggregate import kernel as aggregate

    def atomic_backward(*args, **kwargs):
        raise AssertionError("the atomic backward kernel ran in deterministic mode")

    monkeypatch.setattr(aggregate, "launch_max_aggregate_backward", atomic_backward)
    x = torch.randn(20, 6, requires_grad=True)
    nbr = torch.randint(0, 20, (20, 4), dtype=torch.int32)
    torch.use_deterministic_algorithms(True)
    try:
        with kernels.use_backend("triton"):
            kernels.max_aggregate(x, nbr).square().sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    out, slot = reference.max_aggregate(x.detach(), nbr, True, True)
    expected = reference.max_aggregate_backward(2 * out, nbr, slot, True)
    torch.testing.assert_close(x.grad, expected)


def test_eager_cpu_calls_skip_the_dispatcher_only_when_nobody_looks(monkeypatch):
    """Eager CPU calls without a gradient run their CPU implementation directly (same results,
    same argument checks); a gradient, a FLOP counter or the Triton backend go through the op."""
    from torch.utils.flop_counter import FlopCounterMode

    through_op = []
    for op in (KMEANS, PARTITION, MAX_AGGREGATE, PERMUTE_ROWS):
        real = op.custom_op
        monkeypatch.setattr(
            op, "custom_op", lambda *a, _op=real, _n=op.name: through_op.append(_n) or _op(*a)
        )
    torch.manual_seed(0)
    x = torch.randn(2, 30, 6)
    labels, centroids, iters = kernels.batched_kmeans(x, 3)
    expected = KMEANS.fallback(x, 3, 20)
    assert all(torch.equal(a, b) for a, b in zip((labels, centroids, iters), expected, strict=True))
    perm, inverse, _, _ = kernels.partition(labels, 3)
    rows = x.reshape(60, 6)
    nbr = torch.randint(0, 60, (60, 4), dtype=torch.int32)
    torch.testing.assert_close(
        kernels.max_aggregate(rows, nbr), reference.max_aggregate(rows, nbr)[0]
    )
    kernels.permute_rows(rows, perm, inverse)
    assert through_op == []
    with pytest.raises(ValueError, match="labels"):
        kernels.partition(labels + 5, 3)  # the value check runs on the direct path too

    with FlopCounterMode(display=False):
        kernels.batched_kmeans(x, 3)
    rows.requires_grad_(True)
    kernels.max_aggregate(rows, nbr).sum().backward()
    kernels.permute_rows(rows, perm, inverse)
    assert through_op == ["kmeans", "max_aggregate", "permute_rows"]
