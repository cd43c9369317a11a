"""Self-check cases of the centring kernel (:mod:`kernels.checking`): a NaN in one image stays
in that image's channel."""

from __future__ import annotations

import torch

from ..checking import Shapes, compare_float, generator
from . import kernel, reference


def check_center_tokens(res, dtype, device, shapes: list[Shapes], seed: int) -> None:
    for i, s in enumerate(shapes):
        B, N, C, kappa, K = s.graph
        gen = generator(seed + 85 + i)
        side = int(N**0.5)
        x = torch.randn(B, C, side, N // side, generator=gen) * 3 + 5
        x[B - 1, 0, 0, 0] = float("nan")
        x = x.to(dtype)
        case = f"B={B} C={C} H,W={side},{N // side}"
        res.cases.append(case)
        got = kernel.launch_center_tokens(x.to(device))
        compare_float(res, case, got, reference.center_tokens(x.double()), dtype)
