"""Triton batched k-means against the reference (run on float64 copies: the oracle)."""

from __future__ import annotations

import pytest
import torch

from kernels import kmeans, reference
from tests.helpers import DTYPES, POISON_INT, poisoned
from tests.kernels.test_reference import empty_cluster_case


def blobs(B: int, N: int, C: int, kappa: int, dtype: torch.dtype) -> torch.Tensor:
    """kappa well-separated Gaussian blobs per image, nodes assigned to blobs at random, except
    that the k-th initial centroid (node ``(2k+1)N // 2kappa``) lies in blob k. Lloyd then finds
    the blobs at once and every node is far closer to its own blob's mean than to any other,
    so fp16/bf16 rounding cannot move it across a boundary: the answer is unique."""
    centres = 8.0 * torch.randn(B, kappa, C)
    which = torch.randint(0, kappa, (B, N))
    which[:, reference.kmeans_init_index(N, kappa)] = torch.arange(kappa)
    x = torch.gather(centres, 1, which.unsqueeze(-1).expand(B, N, C)) + 0.3 * torch.randn(B, N, C)
    return x.to(dtype)


@pytest.fixture(params=[False, True], ids=["one-program-per-image", "split"])
def split(request):
    """Both paths of the kernel: the whole loop in one program per image, and several programs
    per image with one launch pair per Lloyd iteration."""
    return request.param


def _run(x, kappa, iters, device, config=None, split=False):
    B, N, _ = x.shape
    labels = poisoned((B, N), torch.int32, device)
    iterations = poisoned((B,), torch.int32, device)
    if split and config is None and device.type == "cpu":
        config = kmeans.KMEANS_SPLIT.interpret_space[1]
    out = kmeans.kmeans(
        x.to(device), kappa, iters, out=(labels, iterations), config=config, split=split
    )
    assert not (labels == POISON_INT).any() and not (iterations == POISON_INT).any()
    return tuple(t.cpu() for t in out)


# Relative tolerance of centroids (float32 sums of float64-exact inputs, per dtype of output).
CENTROID_TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


@pytest.mark.parametrize(
    "B,N,C,kappa",
    [
        (1, 49, 24, 4),
        (3, 37, 17, 6),
        (2, 196, 40, 4),
        (1, 20, 8, 1),
        (1, 784, 12, 6),
        (2, 40, 8, 16),
    ],
)
def test_float32_random_features_match_reference(device, split, B, N, C, kappa):
    x = torch.randn(B, N, C)
    labels, centroids, iterations = _run(x, kappa, 20, device, split=split)
    e_labels, e_centroids, e_iterations = reference.kmeans(x.double(), kappa, 20)
    assert torch.equal(labels, e_labels)
    assert torch.equal(iterations, e_iterations)
    torch.testing.assert_close(centroids.double(), e_centroids, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,C,kappa", [(2, 49, 24, 4), (1, 196, 40, 6), (3, 30, 17, 3)])
def test_separated_clusters_every_dtype(device, split, B, N, C, kappa, dtype):
    x = blobs(B, N, C, kappa, dtype)
    labels, centroids, iterations = _run(x, kappa, 20, device, split=split)
    e_labels, e_centroids, e_iterations = reference.kmeans(x.double(), kappa, 20)
    assert centroids.dtype == dtype
    assert torch.equal(labels, e_labels)
    assert torch.equal(iterations, e_iterations)
    tol = CENTROID_TOL[dtype]
    torch.testing.assert_close(centroids.double(), e_centroids.double(), atol=tol * 8, rtol=tol)


def test_iteration_cap_and_early_stop(device, split):
    x = torch.randn(3, 80, 10)
    for cap in (1, 2, 50):
        labels, centroids, iterations = _run(x, 5, cap, device, split=split)
        e_labels, e_centroids, e_iterations = reference.kmeans(x.double(), 5, cap)
        assert torch.equal(labels, e_labels) and torch.equal(iterations, e_iterations)
        torch.testing.assert_close(centroids.double(), e_centroids, atol=1e-5, rtol=1e-5)
        assert int(iterations.max()) <= cap


def test_empty_cluster_keeps_its_centroid(device, split):
    x = empty_cluster_case()
    labels, centroids, iterations = _run(x, 3, 20, device, split=split)
    e_labels, e_centroids, _ = reference.kmeans(x.double(), 3, 20)
    assert torch.equal(labels, e_labels)
    assert torch.equal(centroids[0, 1], x[0, 6])
    torch.testing.assert_close(centroids.double(), e_centroids)


def test_strided_input(device, split):
    x = torch.randn(2, 60, 2, 12)[:, :, 1, :]  # node stride 24
    labels, centroids, _ = _run(x, 4, 20, device, split=split)
    e_labels, e_centroids, _ = reference.kmeans(x.double(), 4, 20)
    assert torch.equal(labels, e_labels)
    torch.testing.assert_close(centroids.double(), e_centroids, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", kmeans.KMEANS.interpret_space)
def test_every_interpreter_config(device, config):
    x = torch.randn(2, 70, 33)
    labels, centroids, iterations = _run(x, 5, 20, device, config=config)
    e_labels, e_centroids, e_iterations = reference.kmeans(x.double(), 5, 20)
    assert torch.equal(labels, e_labels) and torch.equal(iterations, e_iterations)
    torch.testing.assert_close(centroids.double(), e_centroids, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", kmeans.KMEANS_SPLIT.interpret_space)
def test_split_path_every_interpreter_config(device, config):
    x = torch.randn(3, 70, 33)
    x[1] *= 1e-3  # an image that converges at once beside ones that do not
    labels, centroids, iterations = _run(x, 5, 20, device, config=config, split=True)
    e_labels, e_centroids, e_iterations = reference.kmeans(x.double(), 5, 20)
    assert torch.equal(labels, e_labels) and torch.equal(iterations, e_iterations)
    torch.testing.assert_close(centroids.double(), e_centroids, atol=1e-5, rtol=1e-5)


def test_split_is_the_default_only_for_few_large_images():
    assert kmeans.use_split(1, 784, 640) and kmeans.use_split(32, 784, 640)
    assert not kmeans.use_split(1, 196, 192) and not kmeans.use_split(64, 784, 640)
    assert not kmeans.use_split(1, 196, 640)  # CViG-B: one program per image is estimated faster
