"""Self-check cases of the partition and permutation kernels (:mod:`kernels.checking`): empty
clusters, out-of-range labels (clamped, never out of bounds), NaN rows copied like any value."""

from __future__ import annotations

import torch

from ..checking import POISON_INT, Shapes, compare_exact, generator
from . import kernel, reference


def check_partition(res, dtype, device, shapes: list[Shapes], seed: int) -> None:
    for i, s in enumerate(shapes):
        B, N, _, kappa, _ = s.graph
        gen = generator(seed + i)
        labels = torch.randint(0, kappa, (B, N), generator=gen, dtype=torch.int32)
        if kappa > 2:
            labels[-1][labels[-1] == 2] = 0  # an empty cluster
        cases = [(f"B={B} N={N} kappa={kappa}", labels)]
        bad = labels.clone()
        bad[0, 0], bad[-1, -1] = -3, kappa + 5  # out of range: clamped, never out of bounds
        cases.append((f"out-of-range labels B={B} N={N} kappa={kappa}", bad))
        for case, lab in cases:
            res.cases.append(case)
            out = tuple(
                torch.full((n,), POISON_INT, dtype=torch.int32, device=device)
                for n in (B * N, B * N, B * kappa + 1, B * N)
            )
            got = kernel.launch_partition(lab.to(device), kappa, out=out)
            expected = reference.partition(lab, kappa)
            names = ("perm", "inverse", "offsets", "segment")
            for name, a, e in zip(names, got, expected, strict=True):
                compare_exact(res, case, name, a, e)


def check_permute_rows(res, dtype, device, shapes: list[Shapes], seed: int) -> None:
    for i, s in enumerate(shapes):
        B, N, C, _, _ = s.graph
        gen = generator(seed + i)
        M = B * N
        x = torch.randn(M, C, generator=gen).to(dtype)
        x[M // 2, 0] = float("nan")  # copied like any value
        index = torch.randperm(M, generator=gen).to(torch.int32)
        case = f"M={M} C={C}"
        res.cases.append(case)
        out = torch.full((M, C), float("inf"), dtype=dtype, device=device)
        got = kernel.launch_permute_rows(x.to(device), index.to(device), out=out)
        expected = reference.permute_rows(x, index)
        if not torch.equal(got.cpu().nan_to_num(7.0), expected.nan_to_num(7.0)):
            res.fail(case, "rows differ from the reference")
