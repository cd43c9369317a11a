"""Helpers for the tests: tolerances per dtype, poisoning, well-separated random inputs."""

from __future__ import annotations

import torch

from kernels.selfcheck import offsets_from_sizes  # noqa: F401  (re-exported for the tests)

#: (atol, rtol) per dtype when comparing a kernel's float output with its float64 reference.
TOLERANCE = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 8e-3),
    torch.float64: (1e-12, 1e-12),
}

POISON_INT = -7
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None):
    atol, rtol = TOLERANCE[dtype or actual.dtype]
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


def poisoned(shape, dtype, device, value=None) -> torch.Tensor:
    """A tensor full of a value no kernel writes: NaN for floats, -7 for integers."""
    if dtype.is_floating_point:
        return torch.full(
            shape, float("nan") if value is None else value, dtype=dtype, device=device
        )
    return torch.full(shape, POISON_INT if value is None else value, dtype=dtype, device=device)


def random_partition_sizes(
    num_images: int,
    num_nodes: int,
    num_clusters: int,
    *,
    generator: torch.Generator | None = None,
    min_size: int = 0,
) -> torch.Tensor:
    """Ragged cluster sizes (num_images, num_clusters) summing to num_nodes per image."""
    sizes = torch.full((num_images, num_clusters), min_size, dtype=torch.int64)
    rest = num_nodes - min_size * num_clusters
    assert rest >= 0
    for b in range(num_images):
        weights = torch.rand(num_clusters, generator=generator) ** 2 + 0.01
        extra = torch.multinomial(weights, rest, replacement=True, generator=generator)
        sizes[b] += torch.bincount(extra, minlength=num_clusters)
    return sizes


def integer_features(
    rows: int,
    channels: int,
    dtype: torch.dtype,
    *,
    low: int = -6,
    high: int = 7,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Small random integers: exact in every float dtype, and so are their squared distances
    (fp32 accumulation of integer products is exact), so a kernel and the float64 reference
    see the same distances and equal distances are exact ties the lowest-index rule resolves."""
    return torch.randint(low, high, (rows, channels), generator=generator).to(dtype)


def neighbour_distances(x: torch.Tensor, nbr: torch.Tensor) -> torch.Tensor:
    """Squared distances (float64) from every row of x to its listed neighbours, (M, K)."""
    xd = x.double()
    return ((xd[nbr.long()] - xd.unsqueeze(1)) ** 2).sum(-1)
