"""Self-check cases of the epilogue kernel (:mod:`kernels.checking`): random activations with a
NaN, random partition rows and batch-norm statistics against the float64 reference."""

from __future__ import annotations

import torch

from ..checking import Shapes, compare_float, generator
from . import kernel, reference


def check_segment_norm_gelu(res, dtype, device, shapes: list[Shapes], seed: int) -> None:
    for i, s in enumerate(shapes):
        B, N, C, kappa, K = s.graph
        gen = generator(seed + 80 + i)
        M, P, width = B * N, B * kappa, 2 * C
        acc = torch.randn(M, width, generator=gen)
        acc[M // 2, 0] = float("nan")
        table = torch.randn(P, width, generator=gen)
        segment = torch.randint(0, P, (M,), generator=gen, dtype=torch.int32)
        norm = torch.randn(5, width, generator=gen)
        norm[4] = torch.rand(width, generator=gen) + 0.1  # running variance
        acc, table, norm = acc.to(dtype), table.to(dtype), norm.to(dtype)
        case = f"M={M} C={width} P={P}"
        res.cases.append(case)
        got = kernel.launch_segment_norm_gelu(
            acc.to(device), table.to(device), segment.to(device), norm.to(device), 1e-5
        )
        expected = reference.segment_norm_gelu(
            acc.double(), table.double(), segment, norm.double(), 1e-5
        )
        compare_float(res, case, got, expected, dtype)
