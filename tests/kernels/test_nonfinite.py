"""Non-finite inputs never produce an invalid index, and NaN propagates like in any PyTorch op.

NaN and Inf are placed in one row, in a whole partition and in a whole image; every op runs on
every backend (the PyTorch reference, the Triton kernels under the interpreter, and the compiled
CPU kernels). Indices must
be in range, ``perm`` a permutation, neighbours inside their own partition, and the images with
finite values must get exactly what they get alone.
"""

from __future__ import annotations

import pytest
import torch

import kernels
from clustervig import create_model, degc
from kernels import reference

BACKENDS = ["torch", "triton", "native"]
PLACES = ["row", "partition", "image"]
VALUES = [float("nan"), float("inf")]


def _poison_features(x: torch.Tensor, labels: torch.Tensor, place: str, value: float) -> None:
    """Write ``value`` into image 1 of ``x (B, N, C)``: one node, every node of one cluster, or
    every node (in place)."""
    if place == "row":
        x[1, 3, 0] = value
    elif place == "partition":
        x[1, labels[1] == labels[1, 0]] = value
    else:
        x[1] = value


def _images(B=3, N=40, C=12):
    x = torch.randn(B, N, C)
    labels = reference.kmeans(x, 3)[0]
    return x, labels


def _is_permutation(perm: torch.Tensor) -> bool:
    return torch.equal(perm.sort().values, torch.arange(perm.numel(), dtype=perm.dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("value", VALUES, ids=["nan", "inf"])
def test_graph_ops_keep_indices_valid(backend, place, value):
    B, N, C, kappa, K = 3, 40, 12, 3, 9
    x, labels0 = _images(B, N, C)
    with kernels.use_backend(backend):
        clean = _graph(x, kappa, K)
        bad = x.clone()
        _poison_features(bad, labels0, place, value)
        labels, centroids, perm, offsets, nbr, agg = _graph(bad, kappa, K)

    assert labels.min() >= 0 and labels.max() < kappa
    assert _is_permutation(perm)
    assert offsets[0] == 0 and offsets[-1] == B * N and (offsets.diff() >= 0).all()
    part = torch.repeat_interleave(torch.arange(B * kappa), offsets.diff().long())
    assert ((nbr >= 0) & (nbr < B * N)).all()
    assert torch.equal(part[nbr.long()], part.unsqueeze(1).expand(-1, K))
    # The non-finite image's values are non-finite; its NaN does not leave it.
    assert not torch.isfinite(centroids[1]).all()
    # Images 0 and 2 are unaffected: same labels, centroids, partitions, neighbours, values.
    c_labels, c_centroids, c_perm, c_offsets, c_nbr, c_agg = clean
    for b in (0, 2):
        assert torch.equal(labels[b], c_labels[b])
        torch.testing.assert_close(centroids[b], c_centroids[b])
        rows = slice(b * N, (b + 1) * N)
        assert torch.equal(perm[rows], c_perm[rows])
        assert torch.equal(nbr[rows], c_nbr[rows])
        torch.testing.assert_close(agg[rows], c_agg[rows])
    if value != value:  # NaN
        assert torch.isnan(agg[N : 2 * N]).any()


def _graph(x, kappa, K):
    B, N, C = x.shape
    labels, centroids, _ = kernels.batched_kmeans(x, kappa)
    perm, inverse, offsets, _ = kernels.partition(labels, kappa)
    rows = kernels.permute_rows(x.reshape(B * N, C), perm, inverse)
    nbr = kernels.partition_knn(rows, offsets, K, N)
    agg = kernels.max_aggregate(rows, nbr)
    return labels, centroids, perm, offsets, nbr, agg


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_aggregate_never_reads_outside_x(backend):
    """Neighbour indices out of range (a caller's bug) are clamped, not followed."""
    x = torch.randn(10, 8, requires_grad=True)
    nbr = torch.tensor([[-5, 3], [12, 0]] + [[i, i] for i in range(2, 10)], dtype=torch.int32)
    with kernels.use_backend(backend):
        out = kernels.max_aggregate(x, nbr)
        out.sum().backward()
    clamped = nbr.clamp(0, 9)
    torch.testing.assert_close(out, reference.max_aggregate(x.detach(), clamped, True, False)[0])
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates_through_max_aggregate_and_its_gradient(backend):
    x = torch.randn(6, 4)
    x[2, 1] = float("nan")
    nbr = torch.tensor([[0, 2], [1, 0], [2, 3], [3, 4], [4, 5], [5, 0]], dtype=torch.int32)
    x.requires_grad_(True)
    with kernels.use_backend(backend):
        out = kernels.max_aggregate(x, nbr, relative=False)
        out.sum().backward()
    assert torch.isnan(out[0, 1]) and torch.isnan(out[2, 1])
    assert torch.isfinite(out[[1, 3, 4, 5]]).all()
    assert torch.isfinite(x.grad).all()  # the NaN slot won: the gradient goes there


@pytest.fixture(scope="module")
def cvig_ti_small():
    """CViG-Ti's layers at 64 px (16 nodes per image), a batch of 3 and its clean logits."""
    torch.manual_seed(0)
    model = create_model("cvig_ti", img_size=64, grid=4, num_classes=10).eval()
    model.validate_inputs = False  # the user-facing check would reject the input on the CPU
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad(), kernels.use_backend("triton"):
        # The clean batch is the baseline, not each image alone: convolutions round
        # differently per batch size.
        clean = model(x)
    return model, x, clean


@pytest.mark.slow
@pytest.mark.parametrize("value", VALUES, ids=["nan", "inf"])
@pytest.mark.parametrize("place", PLACES)
def test_cvig_ti_forward_through_the_triton_backend(monkeypatch, cvig_ti_small, place, value):
    """A non-finite image in the batch leaves every index of every DEGC layer valid and the
    other images' logits as they are in the clean batch."""
    model, x, clean = cvig_ti_small
    seen: list[tuple[str, tuple]] = []
    for name in ("batched_kmeans", "partition", "partition_knn"):
        original = getattr(degc, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            out = _original(*args, **kwargs)
            seen.append((_name, out if isinstance(out, tuple) else (out,)))
            return out

        monkeypatch.setattr(degc, name, spy)
    bad = x.clone()
    if place == "row":
        bad[1, :, 20, 20] = value
    elif place == "partition":
        bad[1, :, :32] = value
    else:
        bad[1] = value
    with torch.no_grad(), kernels.use_backend("triton"):
        logits = model(bad)
    torch.testing.assert_close(logits[[0, 2]], clean[[0, 2]], atol=1e-6, rtol=1e-6)
    assert not torch.isfinite(logits[1]).all()
    kappa, nodes = model.config.num_clusters, 16
    for name, out in seen:
        if name == "batched_kmeans":
            assert out[0].min() >= 0 and out[0].max() < kappa
        elif name == "partition":
            assert _is_permutation(out[0]) and _is_permutation(out[1])
            perm, offsets = out[0], out[2]
            assert int(offsets[0]) == 0 and int(offsets[-1]) == 3 * nodes
        else:  # the neighbours (image-order rows) of the layer whose partition was seen last
            nbr = out[0]
            part = torch.empty(3 * nodes, dtype=torch.int64)  # partition of every image row
            part[perm.long()] = torch.repeat_interleave(
                torch.arange(3 * kappa), offsets.diff().long()
            )
            assert ((nbr >= 0) & (nbr < 3 * nodes)).all()
            assert torch.equal(part[nbr.long()], part.unsqueeze(1).expand_as(nbr))
    assert {name for name, _ in seen} == {"batched_kmeans", "partition", "partition_knn"}
