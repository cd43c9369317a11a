"""Helpers for the tests: the kernel package's checking helpers (tolerances per dtype scaled by
the result's magnitude, poisoning, partition boundaries: :mod:`kernels.checking`, shared with
the self-check) and well-separated random inputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from kernels.checking import (
    BASE_TOLERANCE,
    POISON_INT,
    assert_close,
    offsets_from_sizes,
    poisoned,
    relative_error,
    tolerance,
)
from kernels.knn.reference import neighbour_distances

__all__ = [
    "DTYPES",
    "POISON_INT",
    "TOLERANCE",
    "assert_close",
    "calibrated_model",
    "integer_features",
    "neighbour_distances",
    "offsets_from_sizes",
    "poisoned",
    "random_partition_sizes",
    "relative_error",
    "run_as_a_user",
    "tolerance",
]

ROOT = Path(__file__).resolve().parents[1]

#: (atol, rtol) per dtype of one rounded result (see :data:`kernels.checking.BASE_TOLERANCE`).
TOLERANCE = BASE_TOLERANCE

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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


def calibrated_model(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A model of this package with random weights (``seed``) and batch-norm statistics taken
    from random images, in eval mode (:func:`reports.deploy.calibrated`)."""
    from reports.deploy import calibrated

    return calibrated(name, seed, **overrides)


def run_as_a_user(args: list[str], timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    """``python *args`` from the repository root in a fresh process, as a user runs it: without
    the suite's TRITON_INTERPRET, with ``env`` added. Asserts that it exits 0."""
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc
