"""Self-check cases of the k-NN kernel (:mod:`kernels.checking`): integer features (exact
distances, ties broken by the lowest index), ragged, empty and single-node partitions, NaN and
Inf rows (every neighbour stays inside its node's partition), and the model's gathered mode."""

from __future__ import annotations

import torch

from ..checking import (
    POISON_INT,
    Shapes,
    compare_exact,
    generator,
    graph_inputs,
    partition_order,
    within_partitions,
)
from . import kernel, reference


def check_partition_knn(res, dtype, device, shapes: list[Shapes], seed: int) -> None:
    for i, s in enumerate(shapes):
        B, N, C, kappa, K, sizes, offsets, x = graph_inputs(s, seed + i)
        for nonfinite in (False, True):
            rows = x.clone()
            case = f"B={B} N={N} C={C} kappa={kappa} K={K}"
            if nonfinite:
                rows[1, 0] = float("nan")
                rows[N // 2, 1] = float("inf")
                case = "non-finite " + case
            rows = rows.to(dtype)
            res.cases.append(case)
            out = torch.full((B * N, K), POISON_INT, dtype=torch.int32, device=device)
            got = kernel.launch_partition_knn(
                rows.to(device), offsets.to(device), K, N, out=out
            ).cpu()
            if not within_partitions(got, offsets):
                res.fail(case, "a neighbour outside its node's partition")
                continue
            compare_exact(res, case, "neighbours", got, reference.partition_knn(rows, offsets, K))
        check_gathered_knn(res, dtype, device, B, N, K, sizes, offsets, x, seed + i)


def check_gathered_knn(res, dtype, device, B, N, K, sizes, offsets, x, seed) -> None:
    """The model's mode: the same partitions with the rows in a shuffled image order, gathered
    through ``perm``; exact without ``normalize`` (integer features), and with it every list
    inside its node's partition."""
    kappa = sizes.shape[1]
    gen = generator(seed + 90)
    labels = torch.stack(
        [
            torch.repeat_interleave(torch.arange(kappa), sizes[b])[torch.randperm(N, generator=gen)]
            for b in range(B)
        ]
    ).to(torch.int32)
    perm, _ = partition_order(labels, kappa)
    rows = torch.empty_like(x)
    rows[perm.long()] = x  # partition position i holds the features x[i], as above
    rows = rows.to(dtype)
    for normalize in (False, True):
        case = f"gathered{' normalised' if normalize else ''} B={B} N={N} K={K}"
        res.cases.append(case)
        out = torch.full((B * N, K), POISON_INT, dtype=torch.int32, device=device)
        got = kernel.launch_partition_knn(
            rows.to(device), offsets.to(device), K, N, perm=perm.to(device),
            normalize=normalize, out=out,
        ).cpu()  # fmt: skip
        if not within_partitions(got, offsets, perm):
            res.fail(case, "a neighbour outside its node's partition")
        elif not normalize:  # normalised integer rows can be parallel: membership only
            expected = reference.partition_knn(rows, offsets, K, perm=perm)
            compare_exact(res, case, "neighbours", got, expected)
