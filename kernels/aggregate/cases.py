"""Self-check cases of the aggregation kernels (:mod:`kernels.checking`): integer features, so
every maximum and every gradient sum is exact in any order; NaN rows; both modes; the winning
slots of the forward compared exactly."""

from __future__ import annotations

import torch

from ..checking import (
    Shapes,
    compare_exact,
    compare_float,
    generator,
    graph_inputs,
    neighbours_in_partitions,
)
from . import kernel, reference


def check_max_aggregate(res, dtype, device, shapes: list[Shapes], seed: int) -> None:
    for i, s in enumerate(shapes):
        B, N, C, kappa, K, sizes, offsets, x = graph_inputs(s, seed + i)
        M = B * N
        # Integer features: exact in every dtype, with many equal values (the first slot wins).
        nbr = neighbours_in_partitions(offsets, K, generator(seed + 60 + i))
        x[M // 3, :2] = float("nan")  # propagates into every row that has it as a neighbour
        x = x.to(dtype)
        for relative in (True, False):
            case = f"M={M} C={C} K={K} relative={relative}"
            res.cases.append(case)
            out = (
                torch.full((M, C), float("inf"), dtype=dtype, device=device),
                torch.full((M, C), 255, dtype=torch.uint8, device=device),
            )
            got, slot = kernel.launch_max_aggregate(x.to(device), nbr.to(device), relative, out=out)
            expected, e_slot = reference.max_aggregate(x, nbr, relative, True)
            compare_float(res, case, got, expected, dtype)
            compare_exact(res, case, "argslot", slot.to(torch.int32), e_slot.to(torch.int32))
            # inference: the maximum alone, taken in x's dtype
            case = f"{case} no argslot"
            res.cases.append(case)
            got, _ = kernel.launch_max_aggregate(x.to(device), nbr.to(device), relative, False)
            compare_float(res, case, got, expected, dtype)


def check_max_aggregate_backward(res, dtype, device, shapes: list[Shapes], seed: int) -> None:
    for i, s in enumerate(shapes):
        B, N, C, kappa, K, sizes, offsets, x = graph_inputs(s, seed + i)
        gen = generator(seed + 70 + i)
        M = B * N
        nbr = neighbours_in_partitions(offsets, K, generator(seed + 60 + i))
        slot = torch.randint(0, K, (M, C), generator=gen, dtype=torch.uint8)
        # Integer gradients: every sum is exact, whatever order the atomics add in.
        grad = torch.randint(-8, 9, (M, C), generator=gen).float()
        grad[M // 2, 0] = float("nan")
        grad = grad.to(dtype)
        for relative in (True, False):
            case = f"M={M} C={C} K={K} relative={relative}"
            res.cases.append(case)
            got = kernel.launch_max_aggregate_backward(
                grad.to(device), nbr.to(device), slot.to(device), relative
            )
            expected = reference.max_aggregate_backward(grad, nbr, slot, relative)
            compare_float(res, case, got, expected, dtype)
