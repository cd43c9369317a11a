"""Triton batched k-means against the reference (run on float64 copies: the oracle)."""

from __future__ import annotations

import pytest
import torch

from kernels import reference
from kernels.kmeans import launch as kmeans
from kernels.launches import record_launches
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


@pytest.fixture(params=["image", "split", "resident"])
def path(request):
    """Every path of the kernel: the whole loop in one program per image, several programs per
    image with one launch per Lloyd iteration, and one program holding its image on chip."""
    return request.param


def _run(x, kappa, iters, device, config=None, path="image"):
    B, N, C = x.shape
    if path == "resident" and not kmeans.resident_fits(N, C, kappa):
        pytest.skip(f"an image of {N} x {C} does not fit the resident path")
    if path == "resident" and device.type == "cuda" and x.dtype == torch.float32 and not config:
        pytest.skip("on a GPU the resident path takes fp16/bf16 features")
    labels = poisoned((B, N), torch.int32, device)
    iterations = poisoned((B,), torch.int32, device)
    if config is None and device.type == "cpu":
        if path == "split":
            config = kmeans.KMEANS_SPLIT.interpret_space[1]
        elif path == "resident":
            config = kmeans.KMEANS_RESIDENT.interpret_space[0]
    out = kmeans.launch_kmeans(
        x.to(device), kappa, iters, out=(labels, iterations), config=config, path=path
    )
    assert not (labels == POISON_INT).any() and not (iterations == POISON_INT).any()
    return tuple(t.cpu() for t in out)


# Relative tolerance of centroids (float32 sums of float64-exact inputs, per dtype of output).
CENTROID_TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def expect_reference_kmeans(out, x: torch.Tensor, kappa: int, iters: int = 20) -> None:
    """``out = (labels, centroids, iterations)`` of k-means on x: labels and iteration counts
    equal the float64 reference's, centroids (in x's dtype) within the dtype's tolerance."""
    labels, centroids, iterations = out
    e_labels, e_centroids, e_iterations = reference.kmeans(x.double(), kappa, iters)
    assert centroids.dtype == x.dtype
    assert torch.equal(labels, e_labels) and torch.equal(iterations, e_iterations)
    tol = CENTROID_TOL[x.dtype]
    torch.testing.assert_close(centroids.double(), e_centroids, atol=tol * 8, rtol=tol)


SHAPES = [(1, 49, 24, 4), (3, 37, 17, 6), (2, 196, 40, 4), (1, 20, 8, 1), (1, 784, 12, 6)]


@pytest.mark.parametrize("B,N,C,kappa", [*SHAPES, (2, 40, 8, 16)])
def test_float32_random_features_match_reference(device, path, B, N, C, kappa):
    x = torch.randn(B, N, C)
    expect_reference_kmeans(_run(x, kappa, 20, device, path=path), x, kappa)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,C,kappa", [(2, 49, 24, 4), (1, 196, 40, 6), (3, 30, 17, 3)])
def test_separated_clusters_every_dtype(device, path, B, N, C, kappa, dtype):
    x = blobs(B, N, C, kappa, dtype)
    expect_reference_kmeans(_run(x, kappa, 20, device, path=path), x, kappa)


def test_iteration_cap_and_early_stop(device, path):
    x = torch.randn(3, 80, 10)
    for cap in (1, 2, 50):
        out = _run(x, 5, cap, device, path=path)
        expect_reference_kmeans(out, x, 5, cap)
        assert int(out[2].max()) <= cap


def test_empty_cluster_keeps_its_centroid(device, path):
    x = empty_cluster_case()
    labels, centroids, iterations = _run(x, 3, 20, device, path=path)
    e_labels, e_centroids, _ = reference.kmeans(x.double(), 3, 20)
    assert torch.equal(labels, e_labels)
    assert torch.equal(centroids[0, 1], x[0, 6])
    torch.testing.assert_close(centroids.double(), e_centroids)


def test_strided_input(device, path):
    x = torch.randn(2, 60, 2, 12)[:, :, 1, :]  # node stride 24
    labels, centroids, _ = _run(x, 4, 20, device, path=path)
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
    labels, centroids, iterations = _run(x, 5, 20, device, config=config, path="split")
    e_labels, e_centroids, e_iterations = reference.kmeans(x.double(), 5, 20)
    assert torch.equal(labels, e_labels) and torch.equal(iterations, e_iterations)
    torch.testing.assert_close(centroids.double(), e_centroids, atol=1e-5, rtol=1e-5)


def test_split_is_the_default_only_for_few_large_images():
    assert kmeans.use_split(1, 784, 640) and kmeans.use_split(32, 784, 640)
    assert not kmeans.use_split(1, 196, 192) and not kmeans.use_split(64, 784, 640)
    assert not kmeans.use_split(1, 196, 640)  # CViG-B: one program per image is estimated faster


@pytest.mark.parametrize(
    "capability,dtype,shape,expected",
    [
        ((9, 0), torch.bfloat16, (1, 196, 192), "resident"),  # CViG-Ti on an H100
        ((9, 0), torch.float16, (256, 196, 192), "resident"),
        ((9, 0), torch.float32, (1, 196, 192), "image"),  # fp32 tiles do not fit
        ((8, 0), torch.bfloat16, (1, 196, 192), "image"),  # mma.sync: operands in registers
        ((9, 0), torch.bfloat16, (1, 196, 320), "image"),  # CViG-S: too wide
        ((9, 0), torch.bfloat16, (1, 784, 640), "split"),  # CViG-B†
        (None, torch.bfloat16, (1, 196, 192), "image"),  # no GPU named
    ],
)
def test_default_path_for_the_gpu_a_recording_names(capability, dtype, shape, expected):
    if expected == "resident" and not kmeans.KMEANS_RESIDENT.builds_for("e2", 90):
        expected = "image"  # Triton older than the resident path's minimum
    x = torch.empty(shape, dtype=dtype, device="meta")
    with record_launches(capability) as rec:
        assert kmeans.default_path(x, 4) == expected
        kmeans.launch_kmeans(x, 4, 20)
    kernel = {"image": "_kmeans_kernel", "resident": "_kmeans_resident_kernel"}
    assert rec.launches[0].kernel == kernel.get(expected, "_kmeans_step")


def test_resident_path_pads_a_small_image_to_the_gpu_dot_minimum(device):
    """An image of 5 nodes: the sums' product contracts over the row tile, which a GPU's
    ``tl.dot`` needs at least 16 wide (the interpreter takes any width): rows are padded."""
    with record_launches((9, 0)) as rec:
        kmeans.launch_kmeans(torch.empty(1, 5, 8, dtype=torch.bfloat16, device="meta"), 2, 20)
    if kmeans.KMEANS_RESIDENT.builds_for("e2", 90):
        assert rec.launches[0].constexprs["BLOCK_N"] == 16
    x = blobs(2, 5, 8, 2, torch.float32)
    labels, centroids, iterations = _run(x, 2, 20, device, path="resident")
    e_labels, e_centroids, e_iterations = reference.kmeans(x.double(), 2, 20)
    assert torch.equal(labels, e_labels) and torch.equal(iterations, e_iterations)
    torch.testing.assert_close(centroids.double(), e_centroids, atol=1e-5, rtol=1e-5)


def test_resident_path_argument_errors():
    x = torch.randn(1, 300, 8)
    with pytest.raises(ValueError, match="path 'resident' takes images of at most 256 nodes"):
        kmeans.launch_kmeans(x, 4, 20, path="resident")
    with pytest.raises(ValueError, match="argument 'path' must be one of"):
        kmeans.launch_kmeans(x, 4, 20, path="fast")
    with pytest.raises(ValueError, match="tuned for float16 / bfloat16"):
        kmeans.launch_kmeans(torch.randn(1, 30, 8), 4, 20, path="resident")


@pytest.mark.parametrize("dtype", DTYPES)
def test_resident_path_at_the_largest_tile_it_takes(device, dtype):
    """256 nodes (one tile, no padded row) x 48 channels in three slices, 16 clusters: every
    row and cluster slot of the tile is real."""
    x = blobs(1, 256, 48, 16, dtype)
    labels, centroids, iterations = _run(x, 16, 20, device, path="resident")
    e_labels, e_centroids, e_iterations = reference.kmeans(x.double(), 16, 20)
    assert torch.equal(labels, e_labels) and torch.equal(iterations, e_iterations)
    tol = CENTROID_TOL[dtype]
    torch.testing.assert_close(centroids.double(), e_centroids.double(), atol=tol * 8, rtol=tol)
