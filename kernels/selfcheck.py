"""Every Triton kernel checked against its PyTorch reference on the device it runs on.

No kernel of this project is known to be right on a GPU nobody here has used, so each checks
itself where it lands::

    python -m kernels.selfcheck               # every kernel on this GPU, the models' launch shapes
    python -m kernels.selfcheck --quick       # the small first-use check (every code path)
    python -m kernels.selfcheck --interpret   # on the CPU under the Triton interpreter

Inputs are built so that the expected answer is unique (integer-valued features whose distances
are exact in every dtype, exact ties resolved by the shared lowest-index rule, well-separated
clusters) and cover ragged partitions, empty ones and ones smaller than K, batch 1, N that is
not a power of two, fp32/fp16/bf16, and non-finite values (NaN and Inf rows: indices must stay
valid, NaN must propagate, the other images must be unaffected). Outputs are poisoned first,
so an unwritten element fails.

Verdicts are recorded per kernel and dtype (``"kmeans/bfloat16"``) for this GPU and Triton version
in the per-GPU cache (:mod:`kernels.tuning_cache`), with the kernel's source hash: an edited
kernel is checked again. ``python -m autotune --gpu`` runs the full check first. At launch
(:func:`kernel_allowed`): a failed verdict makes the op run its PyTorch reference on the GPU
instead, with one warning; a missing verdict triggers the quick check on first use in the process
(a few seconds, once per kernel and dtype). ``CLUSTERVIG_SELFCHECK`` controls that first-use
check: ``auto`` (default: on CUDA devices), ``on`` (also under the interpreter), ``off``
(never; recorded verdicts still apply).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ._common import dtype_label, interpreter_active, package_version

__all__ = [
    "CheckResult",
    "KernelSelfCheckWarning",
    "check",
    "check_all",
    "kernel_allowed",
    "main",
    "record",
]

ENV_SELFCHECK = "CLUSTERVIG_SELFCHECK"
#: Kernel names as the tuning cache knows them, in the order a DEGC layer runs them.
KERNELS = (
    "center_tokens",
    "kmeans",
    "partition",
    "permute_rows",
    "partition_knn",
    "max_aggregate",
    "gatv2_attention",
    "max_aggregate_backward",
    "segment_norm_gelu",
)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: (atol, rtol) of float outputs against the reference, per dtype.
TOLERANCE = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 8e-3),
}
POISON_INT = -7


class KernelSelfCheckWarning(UserWarning):
    """A kernel failed its self-check on this device; its op runs the PyTorch reference."""


# --------------------------------------------------------------------------------------------
# Inputs with unique answers
# --------------------------------------------------------------------------------------------
def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def integer_rows(rows: int, channels: int, gen: torch.Generator) -> torch.Tensor:
    """Small integers (float32): exact in every float dtype, and so are their squared
    distances, so kernel and reference see the same distances and ties are exact."""
    return torch.randint(-6, 7, (rows, channels), generator=gen).float()


def blobs(B: int, N: int, C: int, kappa: int, gen: torch.Generator) -> torch.Tensor:
    """``(B, N, C)`` float32: kappa well-separated blobs per image, the k-th initial centroid of
    k-means inside blob k, so Lloyd finds the blobs at once in every dtype (a unique answer)."""
    from .reference import kmeans_init_index

    centres = 8.0 * torch.randn(B, kappa, C, generator=gen)
    which = torch.randint(0, kappa, (B, N), generator=gen)
    which[:, kmeans_init_index(N, kappa)] = torch.arange(kappa)
    rows = torch.gather(centres, 1, which.unsqueeze(-1).expand(B, N, C))
    return rows + 0.3 * torch.randn(B, N, C, generator=gen)


def ragged_sizes(B: int, N: int, kappa: int, gen: torch.Generator) -> torch.Tensor:
    """``(B, kappa)`` partition sizes summing to N per image: skewed at random, with a
    single-node partition in the first image and an empty one in the last (when kappa allows)."""
    weights = torch.rand(B, kappa, generator=gen) ** 2 + 0.05
    sizes = torch.zeros(B, kappa, dtype=torch.int64)
    for b in range(B):
        draws = torch.multinomial(weights[b], N, replacement=True, generator=gen)
        sizes[b] = torch.bincount(draws, minlength=kappa)
    if kappa > 1 and N > 2:
        first = sizes[0]
        first[1] = 1
        first[int(first.argmax())] -= int(first.sum()) - N
    if kappa > 2:
        sizes[-1, 0] += sizes[-1, 2]
        sizes[-1, 2] = 0
    return sizes


def offsets_from_sizes(sizes: torch.Tensor) -> torch.Tensor:
    """``(P + 1,)`` int32 partition boundaries of ``(B, kappa)`` sizes."""
    flat = sizes.reshape(-1)
    offsets = torch.zeros(flat.numel() + 1, dtype=torch.int64)
    offsets[1:] = flat.cumsum(0)
    return offsets.to(torch.int32)


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """The outcome of one kernel's self-check for one dtype."""

    kernel: str
    dtype: str
    ok: bool = True
    max_error: float = 0.0
    cases: list[str] = field(default_factory=list)
    detail: str = ""
    seconds: float = 0.0

    def fail(self, case: str, why: str) -> None:
        if self.ok:
            self.detail = f"{case}: {why}"
        self.ok = False


def _max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.double().cpu(), expected.double().cpu()
    both_nan = torch.isnan(a) & torch.isnan(e)
    same_inf = torch.isinf(a) & (a == e)
    diff = (a - e).abs().masked_fill(both_nan | same_inf, 0.0)
    return float(diff.max()) if diff.numel() else 0.0


def _compare_float(res: CheckResult, case: str, actual, expected, dtype) -> None:
    atol, rtol = TOLERANCE[dtype]
    a, e = actual.double().cpu(), expected.double().cpu()
    res.max_error = max(res.max_error, _max_error(a, e))
    if torch.isnan(a).ne(torch.isnan(e)).any():
        res.fail(case, "NaN where the reference has none, or a number where it has NaN")
    elif not torch.allclose(a.nan_to_num(0.0), e.nan_to_num(0.0), atol=atol, rtol=rtol):
        res.fail(case, f"values differ from the reference (max error {_max_error(a, e):.3g})")


def _compare_exact(res: CheckResult, case: str, name: str, actual, expected) -> None:
    actual, expected = actual.cpu(), expected.cpu()
    if (actual == POISON_INT).any():
        res.fail(case, f"{name}: elements left unwritten")
    elif not torch.equal(actual, expected):
        wrong = int((actual != expected).sum())
        res.fail(case, f"{name}: {wrong} of {actual.numel()} differ from the reference")


@dataclass(frozen=True)
class Shapes:
    """The launch shapes one mode checks."""

    kmeans: tuple  # (B, N, C, kappa)
    graph: tuple  # (B, N, C, kappa, K): partition, permute, k-NN, aggregation


SHAPES: dict[str, list[Shapes]] = {
    # The first-use check and the interpreter: small, but every code path (several row and
    # column tiles, ragged and empty partitions, partitions smaller than K, batch 1).
    "quick": [
        Shapes((2, 49, 24, 4), (2, 49, 24, 4, 9)),
        Shapes((1, 37, 17, 3), (1, 37, 17, 3, 18)),
    ],
    # The models' launch shapes (CViG-Ti/S/B at 14x14 nodes, B-dagger at 28x28).
    "full": [
        Shapes((1, 196, 192, 4), (1, 196, 192, 4, 9)),
        Shapes((4, 196, 320, 4), (4, 196, 320, 4, 16)),
        Shapes((3, 196, 640, 4), (2, 196, 640, 4, 18)),
        Shapes((2, 784, 640, 6), (2, 784, 640, 6, 12)),
        Shapes((2, 49, 24, 4), (2, 37, 17, 3, 18)),
    ],
}


def _check_kmeans(res, dtype, device, shapes: list[Shapes], seed: int) -> None:
    from . import kmeans, reference

    for path in _kmeans_paths(kmeans, dtype, device, shapes):
        for i, s in enumerate(shapes):
            B, N, C, kappa = s.kmeans
            gen = _generator(seed + i)
            x = blobs(B, N, C, kappa, gen).to(dtype)
            case = f"{path} B={B} N={N} C={C} kappa={kappa}"
            res.cases.append(case)
            labels, centroids, iterations = _run_kmeans(kmeans, x, kappa, device, path)
            e_labels, e_centroids, e_iterations = reference.kmeans(x.double(), kappa, 20)
            _compare_exact(res, case, "labels", labels, e_labels)
            _compare_exact(res, case, "iterations", iterations, e_iterations)
            _compare_float(res, case, centroids, e_centroids.to(dtype), dtype)

        # Non-finite rows: image 0 gets a NaN node, image 1 an Inf node, image 2 is finite.
        B, N, C, kappa = shapes[0].kmeans
        x = blobs(3, N, C, kappa, _generator(seed + 99))
        x[0, N // 3, 1] = float("nan")
        x[1, N // 2, 0] = float("inf")
        x = x.to(dtype)
        case = f"{path} non-finite B=3 N={N} C={C} kappa={kappa}"
        res.cases.append(case)
        labels, centroids, _ = _run_kmeans(kmeans, x, kappa, device, path)
        if labels.min() < 0 or labels.max() >= kappa:
            res.fail(case, f"labels outside [0, {kappa}) for a non-finite image")
        if not torch.isnan(centroids[0]).any():
            res.fail(case, "NaN did not propagate into the NaN image's centroids")
        alone = _run_kmeans(kmeans, x[2:].contiguous(), kappa, device, path)
        _compare_exact(res, case, "finite image's labels", labels[2:], alone[0])
        _compare_float(res, case, centroids[2:], alone[1], dtype)


def _kmeans_paths(kmeans, dtype, device, shapes: list[Shapes]) -> list[str]:
    """The k-means paths to check: one program per image and the split path everywhere; the
    resident path where its launcher can take it (this GPU and Triton, shapes that fit; every
    dtype under the interpreter)."""
    paths = ["image", "split"]
    fits = all(kmeans.resident_fits(s.kmeans[1], s.kmeans[2], s.kmeans[3]) for s in shapes)
    probe = torch.empty(0, dtype=dtype, device=device)
    if fits and (device.type != "cuda" or kmeans.resident_supported(probe)):
        paths.append("resident")
    return paths


def _run_kmeans(kmeans, x, kappa, device, path):
    B, N, _ = x.shape
    labels = torch.full((B, N), POISON_INT, dtype=torch.int32, device=device)
    iterations = torch.full((B,), POISON_INT, dtype=torch.int32, device=device)
    config = None
    if path == "resident" and device.type != "cuda":  # the interpreter: any dtype, small tiles
        config = kmeans.KMEANS_RESIDENT.interpret_space[0]
    out = kmeans.kmeans(x.to(device), kappa, 20, out=(labels, iterations), config=config, path=path)
    return tuple(t.cpu() for t in out)


def _check_partition(res, dtype, device, shapes: list[Shapes], seed: int) -> None:
    from . import permute, reference

    for i, s in enumerate(shapes):
        B, N, _, kappa, _ = s.graph
        gen = _generator(seed + i)
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
            got = permute.partition(lab.to(device), kappa, out=out)
            expected = reference.partition(lab, kappa)
            names = ("perm", "inverse", "offsets", "segment")
            for name, a, e in zip(names, got, expected, strict=True):
                _compare_exact(res, case, name, a, e)


def _check_permute_rows(res, dtype, device, shapes: list[Shapes], seed: int) -> None:
    from . import permute, reference

    for i, s in enumerate(shapes):
        B, N, C, _, _ = s.graph
        gen = _generator(seed + i)
        M = B * N
        x = torch.randn(M, C, generator=gen).to(dtype)
        x[M // 2, 0] = float("nan")  # copied like any value
        index = torch.randperm(M, generator=gen).to(torch.int32)
        case = f"M={M} C={C}"
        res.cases.append(case)
        out = torch.full((M, C), float("inf"), dtype=dtype, device=device)
        got = permute.permute_rows(x.to(device), index.to(device), out=out)
        expected = reference.permute_rows(x, index)
        if not torch.equal(got.cpu().nan_to_num(7.0), expected.nan_to_num(7.0)):
            res.fail(case, "rows differ from the reference")


def _graph_inputs(s: Shapes, seed: int):
    B, N, C, kappa, K = s.graph
    gen = _generator(seed)
    sizes = ragged_sizes(B, N, kappa, gen)
    offsets = offsets_from_sizes(sizes)
    x = integer_rows(B * N, C, gen)
    return B, N, C, kappa, K, sizes, offsets, x


def _check_partition_knn(res, dtype, device, shapes: list[Shapes], seed: int) -> None:
    from . import knn, reference

    for i, s in enumerate(shapes):
        B, N, C, kappa, K, sizes, offsets, x = _graph_inputs(s, seed + i)
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
            got = knn.partition_knn(rows.to(device), offsets.to(device), K, N, out=out).cpu()
            part = torch.repeat_interleave(torch.arange(sizes.numel()), sizes.reshape(-1))
            inside = (got >= 0) & (got < B * N)
            if not inside.all() or not torch.equal(
                part[got.long().clamp(0, B * N - 1)], part.unsqueeze(1).expand(-1, K)
            ):
                res.fail(case, "a neighbour outside its node's partition")
                continue
            _compare_exact(res, case, "neighbours", got, reference.partition_knn(rows, offsets, K))
        _check_gathered_knn(res, dtype, device, B, N, K, sizes, offsets, x, seed + i)


def _check_gathered_knn(res, dtype, device, B, N, K, sizes, offsets, x, seed) -> None:
    """The model's mode: the same partitions with the rows in a shuffled image order, gathered
    through ``perm``; exact without ``normalize`` (integer features), and with it every list
    inside its node's partition."""
    from . import knn, reference

    kappa = sizes.shape[1]
    gen = _generator(seed + 90)
    labels = torch.stack(
        [
            torch.repeat_interleave(torch.arange(kappa), sizes[b])[torch.randperm(N, generator=gen)]
            for b in range(B)
        ]
    ).to(torch.int32)
    perm, _, _, _ = reference.partition(labels, kappa)
    rows = torch.empty_like(x)
    rows[perm.long()] = x  # partition position i holds the features x[i], as above
    rows = rows.to(dtype)
    label = labels.reshape(-1).long() + torch.arange(B).repeat_interleave(N) * kappa
    for normalize in (False, True):
        case = f"gathered{' normalised' if normalize else ''} B={B} N={N} K={K}"
        res.cases.append(case)
        out = torch.full((B * N, K), POISON_INT, dtype=torch.int32, device=device)
        got = knn.partition_knn(
            rows.to(device), offsets.to(device), K, N, perm=perm.to(device),
            normalize=normalize, out=out,
        ).cpu()  # fmt: skip
        inside = (got >= 0) & (got < B * N)
        if not inside.all() or not torch.equal(
            label[got.long().clamp(0, B * N - 1)], label.unsqueeze(1).expand(-1, K)
        ):
            res.fail(case, "a neighbour outside its node's partition")
        elif not normalize:  # normalised integer rows can be parallel: membership only
            expected = reference.partition_knn(rows, offsets, K, perm=perm)
            _compare_exact(res, case, "neighbours", got, expected)


def _check_max_aggregate(res, dtype, device, shapes: list[Shapes], seed: int) -> None:
    from . import aggregate, reference

    for i, s in enumerate(shapes):
        B, N, C, kappa, K, sizes, offsets, x = _graph_inputs(s, seed + i)
        M = B * N
        # Integer features: exact in every dtype, with many equal values (the first slot wins).
        nbr = reference.partition_knn(x, offsets, K)
        x[M // 3, :2] = float("nan")  # propagates into every row that has it as a neighbour
        x = x.to(dtype)
        for relative in (True, False):
            case = f"M={M} C={C} K={K} relative={relative}"
            res.cases.append(case)
            out = (
                torch.full((M, C), float("inf"), dtype=dtype, device=device),
                torch.full((M, C), 255, dtype=torch.uint8, device=device),
            )
            got, slot = aggregate.max_aggregate(x.to(device), nbr.to(device), relative, out=out)
            expected, e_slot = reference.max_aggregate(x, nbr, relative, True)
            _compare_float(res, case, got, expected, dtype)
            _compare_exact(res, case, "argslot", slot.to(torch.int32), e_slot.to(torch.int32))
            # inference: the maximum alone, taken in x's dtype
            case = f"{case} no argslot"
            res.cases.append(case)
            got, _ = aggregate.max_aggregate(x.to(device), nbr.to(device), relative, False)
            _compare_float(res, case, got, expected, dtype)


def _check_max_aggregate_backward(res, dtype, device, shapes: list[Shapes], seed: int) -> None:
    from . import aggregate, reference

    for i, s in enumerate(shapes):
        B, N, C, kappa, K, sizes, offsets, x = _graph_inputs(s, seed + i)
        gen = _generator(seed + 70 + i)
        M = B * N
        nbr = reference.partition_knn(x, offsets, K)
        slot = torch.randint(0, K, (M, C), generator=gen, dtype=torch.uint8)
        # Integer gradients: every sum is exact, whatever order the atomics add in.
        grad = torch.randint(-8, 9, (M, C), generator=gen).float()
        grad[M // 2, 0] = float("nan")
        grad = grad.to(dtype)
        for relative in (True, False):
            case = f"M={M} C={C} K={K} relative={relative}"
            res.cases.append(case)
            got = aggregate.max_aggregate_backward(
                grad.to(device), nbr.to(device), slot.to(device), relative
            )
            expected = reference.max_aggregate_backward(grad, nbr, slot, relative)
            _compare_float(res, case, got, expected, dtype)


def _check_segment_norm_gelu(res, dtype, device, shapes: list[Shapes], seed: int) -> None:
    from . import epilogue, reference

    for i, s in enumerate(shapes):
        B, N, C, kappa, K = s.graph
        gen = _generator(seed + 80 + i)
        M, P, width = B * N, B * kappa, 2 * C
        acc = torch.randn(M, width, generator=gen)
        acc[M // 2, 0] = float("nan")
        table = torch.randn(P, width, generator=gen)
        segment = torch.randint(0, P, (M,), generator=gen, dtype=torch.int32)
        vectors = [torch.randn(width, generator=gen) for _ in range(4)]
        vectors.append(torch.rand(width, generator=gen) + 0.1)  # running variance
        acc, table = acc.to(dtype), table.to(dtype)
        vectors = [v.to(dtype) for v in vectors]
        case = f"M={M} C={width} P={P}"
        res.cases.append(case)
        got = epilogue.segment_norm_gelu(
            acc.to(device), table.to(device), segment.to(device),
            *[v.to(device) for v in vectors], 1e-5,
        )  # fmt: skip
        expected = reference.segment_norm_gelu(
            acc.double(), table.double(), segment, *[v.double() for v in vectors], 1e-5
        )
        _compare_float(res, case, got, expected, dtype)


def _check_center_tokens(res, dtype, device, shapes: list[Shapes], seed: int) -> None:
    from . import center, reference

    for i, s in enumerate(shapes):
        B, N, C, kappa, K = s.graph
        gen = _generator(seed + 85 + i)
        side = int(N**0.5)
        x = torch.randn(B, C, side, N // side, generator=gen) * 3 + 5
        x[B - 1, 0, 0, 0] = float("nan")
        x = x.to(dtype)
        case = f"B={B} C={C} H,W={side},{N // side}"
        res.cases.append(case)
        got = center.center_tokens(x.to(device))
        _compare_float(res, case, got, reference.center_tokens(x.double()), dtype)


def _check_gatv2_attention(res, dtype, device, shapes: list[Shapes], seed: int) -> None:
    from . import gatv2, reference

    for i, s in enumerate(shapes):
        B, N, C, kappa, K = s.graph
        gen = _generator(seed + 95 + i)
        source, target = (
            torch.randn(B, kappa, C, generator=gen),
            torch.randn(B, kappa, C, generator=gen),
        )
        att, bias = torch.randn(C, generator=gen), torch.randn(C, generator=gen)
        source[B - 1, 0, 0] = float("nan")
        tensors = [t.to(dtype) for t in (source, target, att, bias)]
        case = f"B={B} kappa={kappa} C={C}"
        res.cases.append(case)
        got = gatv2.gatv2_attention(*[t.to(device) for t in tensors], 0.2)
        expected = reference.gatv2_attention(*[t.double() for t in tensors], 0.2)
        _compare_float(res, case, got, expected, dtype)


_CHECKS: dict[str, tuple[Callable, tuple[torch.dtype, ...]]] = {
    "kmeans": (_check_kmeans, FLOAT_DTYPES),
    "partition": (_check_partition, (torch.int32,)),
    "permute_rows": (_check_permute_rows, FLOAT_DTYPES),
    "partition_knn": (_check_partition_knn, FLOAT_DTYPES),
    "max_aggregate": (_check_max_aggregate, FLOAT_DTYPES),
    "max_aggregate_backward": (_check_max_aggregate_backward, FLOAT_DTYPES),
    "segment_norm_gelu": (_check_segment_norm_gelu, FLOAT_DTYPES),
    "center_tokens": (_check_center_tokens, FLOAT_DTYPES),
    "gatv2_attention": (_check_gatv2_attention, FLOAT_DTYPES),
}


def dtypes_of(kernel: str) -> tuple[torch.dtype, ...]:
    """The dtypes a kernel is checked (and its verdicts recorded) for."""
    return _CHECKS[kernel][1]


def check(
    kernel: str, dtype: torch.dtype, device: torch.device, mode: str = "quick", seed: int = 0
) -> CheckResult:
    """Run one kernel's self-check for one dtype on ``device`` (``mode``: quick | full).

    Any exception (a compile error, a launch failure) is a failed check, not a crash.
    """
    if kernel not in _CHECKS:
        raise ValueError(f"selfcheck: argument 'kernel' must be one of {KERNELS}, got {kernel!r}")
    if mode not in SHAPES:
        raise ValueError(
            f"selfcheck: argument 'mode' must be one of {sorted(SHAPES)}, got {mode!r}"
        )
    res = CheckResult(kernel, dtype_label(dtype))
    start = time.perf_counter()
    try:
        _CHECKS[kernel][0](res, dtype, device, SHAPES[mode], seed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as err:  # noqa: BLE001 - a kernel that cannot run has failed its check
        res.fail(res.cases[-1] if res.cases else "launch", f"{type(err).__name__}: {err}"[:300])
    res.seconds = time.perf_counter() - start
    return res


def check_all(
    device: torch.device,
    mode: str = "full",
    kernels: tuple[str, ...] = KERNELS,
    on_result: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Every kernel, every dtype it takes; ``on_result`` sees each result as it completes."""
    results = []
    for kernel in kernels:
        for dtype in dtypes_of(kernel):
            res = check(kernel, dtype, device, mode)
            results.append(res)
            if on_result is not None:
                on_result(res)
    return results


# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------
#: Kernels whose verdict also covers other tunables' sources (k-means has three paths).
_ALSO_COVERS = {"kmeans": ("kmeans_split", "kmeans_resident")}


def _source_hash(kernel: str) -> str:
    from ._tuning import tunables

    registry = tunables()
    return "+".join(registry[k].source_hash() for k in (kernel, *_ALSO_COVERS.get(kernel, ())))


def _verdict_key(kernel: str, dtype: str) -> str:
    return f"{kernel}/{dtype}"


def record(results: list[CheckResult], device: torch.device, mode: str) -> None:
    """Store verdicts in the per-GPU cache (an unwritable cache keeps them for this process)."""
    from . import tuning_cache

    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    verdicts = {
        _verdict_key(r.kernel, r.dtype): {
            "ok": r.ok,
            "source_hash": _source_hash(r.kernel),
            "max_error": r.max_error,
            "cases": len(r.cases),
            "mode": mode,
            "detail": r.detail,
            "checked_at": now,
        }
        for r in results
    }
    _session_verdicts.update({(_device_key(device), k): v for k, v in verdicts.items()})
    try:
        tuning_cache.save_verdicts(tuning_cache.device_identity(device), verdicts)
    except OSError as err:
        warnings.warn(
            f"could not record kernel self-check verdicts ({err}); they hold for this process",
            KernelSelfCheckWarning,
            stacklevel=2,
        )


def recorded_verdict(kernel: str, dtype: torch.dtype, device: torch.device) -> dict | None:
    """The verdict for this kernel, dtype and device, if one was recorded for today's source."""
    from . import tuning_cache

    key = _verdict_key(kernel, dtype_label(dtype))
    verdict = _session_verdicts.get((_device_key(device), key))
    if verdict is None:
        verdict = tuning_cache.load_verdicts(device).get(key)
    if not isinstance(verdict, dict) or verdict.get("source_hash") != _source_hash(kernel):
        return None
    return verdict


def _device_key(device: torch.device) -> tuple:
    return (device.type, device.index)


_session_verdicts: dict[tuple, dict] = {}
_allowed: dict[tuple, bool] = {}


def reset() -> None:
    """Forget this process's verdicts and launch decisions (tests; after a new check)."""
    _session_verdicts.clear()
    _allowed.clear()


def first_use_check_enabled(device: torch.device) -> bool:
    value = os.environ.get(ENV_SELFCHECK, "auto").strip().lower()
    if value in ("off", "0", "false", "no"):
        return False
    if value in ("on", "1", "true", "yes"):
        return True
    return device.type == "cuda"


def kernel_allowed(kernel: str, t: torch.Tensor) -> bool:
    """Whether ``kernel`` may launch for the tensor ``t`` (its device and dtype).

    A recorded failure -> False (with one warning per kernel and dtype); no verdict -> the quick
    check runs once in this process when enabled (see the module docstring) and is recorded.
    """
    dtype = t.dtype if t.is_floating_point() else torch.int32
    key = (kernel, dtype, _device_key(t.device))
    allowed = _allowed.get(key)
    if allowed is not None:
        return allowed
    verdict = recorded_verdict(kernel, dtype, t.device)
    if verdict is None and t.is_cuda and torch.cuda.is_current_stream_capturing():
        return True  # inside CUDA-graph capture nothing may synchronise: check on a later call
    if verdict is None and first_use_check_enabled(t.device):
        result = check(kernel, dtype, t.device, "quick")
        record([result], t.device, "quick")
        verdict = {"ok": result.ok, "detail": result.detail}
    allowed = verdict is None or bool(verdict.get("ok"))
    if not allowed:
        warnings.warn(
            f"clustervig: the Triton kernel '{kernel}' failed its self-check for "
            f"{dtype_label(dtype)} on {_device_name(t.device)} (triton {_triton_version()}): "
            f"{verdict.get('detail') or 'see python -m kernels.selfcheck'}. Its op runs the "
            "PyTorch reference on this device instead (same results, slower). Please report "
            "this, with the output of `python -m kernels.selfcheck`, in the project's issue "
            "tracker.",
            KernelSelfCheckWarning,
            stacklevel=4,
        )
    _allowed[key] = allowed
    return allowed


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "the CPU (Triton interpreter)"


def _triton_version() -> str:
    from .tuning_cache import triton_version

    return triton_version()


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _rows(results: list[CheckResult]) -> Iterator[str]:
    yield f"{'kernel':24s} {'dtype':9s} {'cases':>5s} {'max error':>10s} {'seconds':>8s}  verdict"
    for r in results:
        verdict = "ok" if r.ok else f"FAIL  {r.detail}"
        yield (
            f"{r.kernel:24s} {r.dtype:9s} {len(r.cases):5d} {r.max_error:10.3g} "
            f"{r.seconds:8.2f}  {verdict}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kernels.selfcheck",
        description="Check every Triton kernel against its PyTorch reference on this device "
        "(the models' launch shapes, fp32/fp16/bf16, ragged and small partitions, non-finite "
        "inputs) and record a verdict per kernel for this GPU and Triton version. A kernel "
        "that fails is not launched here: its op runs the PyTorch reference instead.",
    )
    parser.add_argument(
        "--interpret",
        action="store_true",
        help="run on the CPU under the Triton interpreter (small shapes; checks the kernels' "
        "logic, not the GPU compiler)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the small first-use shapes only (GPU: seconds)"
    )
    parser.add_argument(
        "--kernels", nargs="+", choices=KERNELS, metavar="KERNEL", help="kernels (default: all)"
    )
    parser.add_argument(
        "--no-record", action="store_true", help="print the verdicts without recording them"
    )
    parser.add_argument("--version", action="version", version=package_version())
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.interpret and not interpreter_active():
        # Triton reads TRITON_INTERPRET when it is imported, and importing this package has
        # imported it (torch.library does): start again with the variable set.
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "kernels.selfcheck", *argv], env)
    if not args.interpret and not torch.cuda.is_available():
        print(
            "python -m kernels.selfcheck: no CUDA device is visible; use --interpret to check "
            "the kernels on the CPU under the Triton interpreter",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cpu") if args.interpret else torch.device("cuda")
    mode = "quick" if (args.quick or args.interpret) else "full"
    print(f"self-check on {_device_name(device)}, triton {_triton_version()}, {mode} shapes")
    results: list[CheckResult] = []

    def show(res: CheckResult) -> None:
        if not results:
            print(next(_rows([])), flush=True)
        results.append(res)
        print(list(_rows([res]))[1], flush=True)

    with warnings.catch_warnings():
        # numpy inside the interpreter reports the NaN/Inf the non-finite cases feed it
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="triton")
        check_all(device, mode, tuple(args.kernels or KERNELS), on_result=show)
    if not args.no_record:
        record(results, device, mode)
    failed = [r for r in results if not r.ok]
    print(
        f"\n{len(results) - len(failed)} of {len(results)} kernel/dtype checks passed"
        + (f"; failed: {', '.join(f'{r.kernel}/{r.dtype}' for r in failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
