"""Self-check cases of the k-means kernels (:mod:`kernels.checking`), every path the launcher can
take on the device: well-separated blobs (a unique answer in every dtype), batch 1, N not a power
of two, and non-finite images (labels stay valid, NaN reaches only its own image)."""

from __future__ import annotations

import torch

from ..checking import POISON_INT, Shapes, compare_exact, compare_float, generator
from . import launch, reference
from .reference import kmeans_init_index


def blobs(B: int, N: int, C: int, kappa: int, gen: torch.Generator) -> torch.Tensor:
    """``(B, N, C)`` float32: kappa well-separated blobs per image, the k-th initial centroid of
    k-means inside blob k, so Lloyd finds the blobs at once in every dtype (a unique answer)."""
    centres = 8.0 * torch.randn(B, kappa, C, generator=gen)
    which = torch.randint(0, kappa, (B, N), generator=gen)
    which[:, kmeans_init_index(N, kappa)] = torch.arange(kappa)
    rows = torch.gather(centres, 1, which.unsqueeze(-1).expand(B, N, C))
    return rows + 0.3 * torch.randn(B, N, C, generator=gen)


def check_kmeans(res, dtype, device, shapes: list[Shapes], seed: int) -> None:
    for path, i in kmeans_plan(dtype, device, shapes):
        B, N, C, kappa = shapes[i].kmeans
        gen = generator(seed + i)
        x = blobs(B, N, C, kappa, gen).to(dtype)
        case = f"{path} B={B} N={N} C={C} kappa={kappa}"
        res.cases.append(case)
        labels, centroids, iterations = _run_kmeans(x, kappa, device, path)
        e_labels, e_centroids, e_iterations = reference.kmeans(x.double(), kappa, 20)
        compare_exact(res, case, "labels", labels, e_labels)
        compare_exact(res, case, "iterations", iterations, e_iterations)
        compare_float(res, case, centroids, e_centroids.to(dtype), dtype)

    # Non-finite rows: image 0 gets a NaN node, image 1 an Inf node, image 2 is finite.
    B, N, C, kappa = shapes[0].kmeans
    for path in _paths(dtype, device, shapes[0]):
        x = blobs(3, N, C, kappa, generator(seed + 99))
        x[0, N // 3, 1] = float("nan")
        x[1, N // 2, 0] = float("inf")
        x = x.to(dtype)
        case = f"{path} non-finite B=3 N={N} C={C} kappa={kappa}"
        res.cases.append(case)
        labels, centroids, _ = _run_kmeans(x, kappa, device, path)
        if labels.min() < 0 or labels.max() >= kappa:
            res.fail(case, f"labels outside [0, {kappa}) for a non-finite image")
        if not torch.isnan(centroids[0]).any():
            res.fail(case, "NaN did not propagate into the NaN image's centroids")
        alone = _run_kmeans(x[2:].contiguous(), kappa, device, path)
        compare_exact(res, case, "finite image's labels", labels[2:], alone[0])
        compare_float(res, case, centroids[2:], alone[1], dtype)


def kmeans_plan(dtype, device, shapes: list[Shapes]) -> list[tuple[str, int]]:
    """``(path, shape index)`` of every blob case, path by path: each shape by the image and the
    split paths, and by the resident path wherever its launcher can take that shape (on the
    full check: CViG-Ti's 196 x 192 images, on the tile and channel slices a GPU launches)."""
    return [
        (path, i)
        for path in ("image", "split", "resident")
        for i, s in enumerate(shapes)
        if path in _paths(dtype, device, s)
    ]


def _paths(dtype, device, shapes: Shapes) -> list[str]:
    """The paths one shape is checked by: the resident one only where it fits, and on a GPU
    where this GPU and Triton launch it (every dtype under the interpreter)."""
    paths = ["image", "split"]
    B, N, C, kappa = shapes.kmeans
    if launch.resident_fits(N, C, kappa) and _resident_launched(dtype, device):
        paths.append("resident")
    return paths


def _resident_launched(dtype, device) -> bool:
    if device.type != "cuda":
        return True
    return launch.resident_supported(torch.empty(0, dtype=dtype, device=device))


def _run_kmeans(x, kappa, device, path):
    B, N, _ = x.shape
    labels = torch.full((B, N), POISON_INT, dtype=torch.int32, device=device)
    iterations = torch.full((B,), POISON_INT, dtype=torch.int32, device=device)
    config = None
    if path == "resident" and device.type != "cuda":  # the interpreter: any dtype, small tiles
        config = launch.KMEANS_RESIDENT.interpret_space[0]
    out = launch.launch_kmeans(
        x.to(device), kappa, 20, out=(labels, iterations), config=config, path=path
    )
    return tuple(t.cpu() for t in out)
