"""Self-check cases of the GATv2 attention kernel (:mod:`kernels.checking`): a NaN centroid in
the last image."""

from __future__ import annotations

import torch

from ..checking import Shapes, compare_float, generator
from . import kernel, reference


def check_gatv2_attention(res, dtype, device, shapes: list[Shapes], seed: int) -> None:

    for i, s in enumerate(shapes):
        B, N, C, kappa, K = s.graph
        gen = generator(seed + 95 + i)
        source, target = (
            torch.randn(B, kappa, C, generator=gen),
            torch.randn(B, kappa, C, generator=gen),
        )
        att, bias = torch.randn(C, generator=gen), torch.randn(C, generator=gen)
        source[B - 1, 0, 0] = float("nan")
        tensors = [t.to(dtype) for t in (source, target, att, bias)]
        case = f"B={B} kappa={kappa} C={C}"
        res.cases.append(case)
        got = kernel.launch_gatv2_attention(*[t.to(device) for t in tensors], 0.2)
        expected = reference.gatv2_attention(*[t.double() for t in tensors], 0.2)
        compare_float(res, case, got, expected, dtype)
