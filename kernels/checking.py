"""Checking a kernel against its reference: inputs with unique answers, poisoned outputs, and
tolerances per dtype scaled by the result's magnitude and the reduction's length.

One set of helpers for the self-check cases of every op (``kernels/<op>/cases.py``, run on the
device a kernel lands on) and for the test suite, so that a test compares values the way the
self-check does and no comparison depends on one machine's rounding:

- inputs whose expected answer is unique: small integers (exact in every float dtype, and so
  are their squared distances), ragged partition sizes with an empty and a single-node
  partition, a seeded generator per case;
- :data:`POISON_INT` / NaN-filled outputs, so an unwritten element fails;
- :func:`tolerance`: ``(atol, rtol)`` of a float result in a dtype, ``atol`` scaled by the
  magnitude of the expected result and by the square root of the number of terms each output
  element sums (rounding errors of a sum of n terms grow like sqrt(n) for random signs);
  :func:`assert_close` applies it, :func:`relative_error` compares whole tensors by norm (for
  values that went through several layers, where single elements may round apart);
- :class:`CheckedKernel` (what the self-check and the launch gate know of a kernel),
  :class:`CheckResult` and :func:`run_check`: the outcome of one kernel's check in one dtype,
  any exception a failure rather than a crash.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ._common import FLOAT_DTYPES, dtype_label, resolve

__all__ = [
    "BASE_TOLERANCE",
    "CheckedKernel",
    "CheckResult",
    "POISON_INT",
    "SHAPES",
    "Shapes",
    "assert_close",
    "compare_exact",
    "compare_float",
    "generator",
    "graph_inputs",
    "integer_rows",
    "max_error",
    "neighbours_in_partitions",
    "offsets_from_sizes",
    "partition_order",
    "poisoned",
    "ragged_sizes",
    "relative_error",
    "run_check",
    "tolerance",
    "within_partitions",
]

#: (atol, rtol) of one rounded float result against a float64 reference, per dtype: a few units
#: in the last place for float32, half-precision rounding of O(1) values for fp16 / bf16.
BASE_TOLERANCE = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 8e-3),
    torch.float64: (1e-12, 1e-12),
}
POISON_INT = -7


# --------------------------------------------------------------------------------------------
# Tolerances
# --------------------------------------------------------------------------------------------
def _finite_magnitude(t: torch.Tensor) -> float:
    finite = t[torch.isfinite(t)]
    return float(finite.abs().max()) if finite.numel() else 0.0


def tolerance(
    dtype: torch.dtype, expected: torch.Tensor | None = None, reduction: int = 1
) -> tuple[float, float]:
    """``(atol, rtol)`` for a result in ``dtype``: the dtype's :data:`BASE_TOLERANCE`, with
    ``atol`` scaled by the largest finite magnitude of ``expected`` (at least 1) and by
    ``sqrt(reduction)``, the number of rounded terms each element sums."""
    atol, rtol = BASE_TOLERANCE[dtype]
    scale = 1.0 if expected is None else max(1.0, _finite_magnitude(expected.double()))
    return atol * scale * math.sqrt(max(1, reduction)), rtol


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    dtype: torch.dtype | None = None,
    *,
    reduction: int = 1,
) -> None:
    """``torch.testing.assert_close`` in float64 with :func:`tolerance` (NaN equal to NaN)."""
    atol, rtol = tolerance(dtype or actual.dtype, expected, reduction)
    torch.testing.assert_close(
        actual.double(), expected.double(), atol=atol, rtol=rtol, equal_nan=True
    )


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``|actual - expected| / |expected|`` over the whole tensors (Frobenius norms, float64):
    for results of several layers, where a near-tie may round one element apart while a wrong
    result moves the whole tensor."""
    a, e = actual.double(), expected.double()
    return float((a - e).norm() / e.norm().clamp_min(torch.finfo(torch.float64).tiny))


# --------------------------------------------------------------------------------------------
# Inputs with unique answers
# --------------------------------------------------------------------------------------------
def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def integer_rows(rows: int, channels: int, gen: torch.Generator) -> torch.Tensor:
    """Small integers (float32): exact in every float dtype, and so are their squared
    distances, so kernel and reference see the same distances and ties are exact."""
    return torch.randint(-6, 7, (rows, channels), generator=gen).float()


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


def neighbours_in_partitions(offsets: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """``(M, k)`` int32: for every row, k random rows of its own partition (with repeats; a
    single-node partition lists itself k times), as the model's k-NN lists are shaped."""
    offsets = offsets.long()
    sizes = offsets[1:] - offsets[:-1]
    start = torch.repeat_interleave(offsets[:-1], sizes)  # (M,) first row of each row's part
    size = torch.repeat_interleave(sizes, sizes)
    draws = torch.rand(start.shape[0], k, generator=gen)
    return (start[:, None] + (draws * size[:, None]).long()).to(torch.int32)


def partition_order(labels: torch.Tensor, kappa: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(perm, offsets)`` int32 of ``(B, N)`` labels in ``[0, kappa)``, on their device: the
    partition order's contract (image-major, cluster by cluster, stable), for building inputs
    of the ops that consume it (the op ``partition`` is what a model runs)."""
    B, N = labels.shape
    keyed = labels.long() + kappa * torch.arange(B, device=labels.device).unsqueeze(1)
    perm = torch.sort(keyed.reshape(-1), stable=True).indices
    counts = torch.bincount(keyed.reshape(-1), minlength=B * kappa)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return perm.to(torch.int32), offsets.to(torch.int32)


def within_partitions(nbr: torch.Tensor, offsets: torch.Tensor, perm=None) -> bool:
    """Whether every id of the neighbour lists ``nbr (M, K)`` is a row of the M rows and lies in
    its own row's partition (partition positions ``[offsets[q], offsets[q+1])``; with ``perm``,
    position p holds row ``perm[p]``, as :func:`partition_order` returns it)."""
    M = nbr.shape[0]
    if nbr.numel() and (int(nbr.min()) < 0 or int(nbr.max()) >= M):
        return False
    sizes = (offsets[1:] - offsets[:-1]).long()
    part = torch.repeat_interleave(torch.arange(sizes.numel(), device=nbr.device), sizes)
    if perm is not None:
        part = torch.empty_like(part).index_copy_(0, perm.long(), part)  # by row, not position
    return torch.equal(part[nbr.long()], part.unsqueeze(1).expand_as(nbr))


def graph_inputs(shapes: Shapes, seed: int):
    """``(B, N, C, kappa, K, sizes, offsets, x)`` of a graph case: ragged partitions of
    :func:`ragged_sizes` and integer features ``x (B*N, C)`` in partition order."""
    B, N, C, kappa, K = shapes.graph
    gen = generator(seed)
    sizes = ragged_sizes(B, N, kappa, gen)
    offsets = offsets_from_sizes(sizes)
    x = integer_rows(B * N, C, gen)
    return B, N, C, kappa, K, sizes, offsets, x


def poisoned(shape, dtype: torch.dtype, device, value=None) -> torch.Tensor:
    """A tensor full of a value no kernel writes: NaN for floats, :data:`POISON_INT` for
    integers (or ``value``)."""
    if dtype.is_floating_point:
        fill = float("nan") if value is None else value
    else:
        fill = POISON_INT if value is None else value
    return torch.full(shape, fill, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------
# Results
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
    source_hash: str = ""  # of the kernel sources the verdict covers

    def fail(self, case: str, why: str) -> None:
        if self.ok:
            self.detail = f"{case}: {why}"
        self.ok = False


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.double().cpu(), expected.double().cpu()
    both_nan = torch.isnan(a) & torch.isnan(e)
    same_inf = torch.isinf(a) & (a == e)
    diff = (a - e).abs().masked_fill(both_nan | same_inf, 0.0)
    return float(diff.max()) if diff.numel() else 0.0


def compare_float(res: CheckResult, case: str, actual, expected, dtype) -> None:
    atol, rtol = tolerance(dtype)  # unscaled: the self-check's inputs are O(1), its sums short
    a, e = actual.double().cpu(), expected.double().cpu()
    error = max_error(a, e)
    res.max_error = max(res.max_error, error)
    if torch.isnan(a).ne(torch.isnan(e)).any():
        res.fail(case, "NaN where the reference has none, or a number where it has NaN")
    elif not torch.allclose(a.nan_to_num(0.0), e.nan_to_num(0.0), atol=atol, rtol=rtol):
        res.fail(case, f"values differ from the reference (max error {error:.3g})")


def compare_exact(res: CheckResult, case: str, name: str, actual, expected) -> None:
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
    # The shapes the headline models launch, and nothing else (a first GPU run's check: it
    # compiles what the benchmarks then reuse): CViG-Ti at 14x14 nodes, B-dagger at 28x28.
    "launch": [
        Shapes((1, 196, 192, 4), (1, 196, 192, 4, 9)),
        Shapes((1, 784, 640, 6), (1, 784, 640, 6, 12)),
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


@dataclass(frozen=True, eq=False)
class CheckedKernel:
    """A Triton kernel, or a family of kernels that share one verdict (k-means' three paths).

    Attributes:
        name: the verdict's key and the kernel's name in ``python -m kernels.selfcheck``.
        tunables: name -> ``"module:NAME"`` of each :class:`kernels.tuning.Tunable` it covers
            (the names are the tuning cache's keys, known without importing Triton).
        cases: ``"module:function"`` of its self-check cases,
            ``cases(res, dtype, device, shapes, seed)`` (see :mod:`kernels.checking`).
        launcher: ``"module:function"`` of its Triton launcher (imported on first use).
        dtypes: the dtypes it is checked (and its verdicts recorded) for.

    :meth:`in_folder` spells these the way every op folder lays them out.
    """

    name: str
    tunables: dict[str, str]
    cases: str
    launcher: str
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES

    @classmethod
    def in_folder(
        cls,
        folder: str,
        *tunables: str,
        module: str = "kernel",
        dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES,
    ) -> CheckedKernel:
        """The kernel of ``kernels/<folder>/`` whose tunables are the attributes ``tunables`` of
        ``<module>.py`` (``"MAX_AGGREGATE"`` is the tunable ``max_aggregate``); the first names
        the kernel, its launcher ``<module>.launch_<name>`` and its cases
        ``cases.check_<name>``."""
        name = tunables[0].lower()
        home = f"kernels.{folder}"
        return cls(
            name=name,
            tunables={attr.lower(): f"{home}.{module}:{attr}" for attr in tunables},
            cases=f"{home}.cases:check_{name}",
            launcher=f"{home}.{module}:launch_{name}",
            dtypes=dtypes,
        )

    def load_tunables(self) -> list:
        """The tunables (imports the kernel modules, and so Triton)."""
        return [resolve(path) for path in self.tunables.values()]

    def source_hash(self) -> str:
        """The hash of every kernel source the verdict covers."""
        return "+".join(t.source_hash() for t in self.load_tunables())

    def run_cases(self, res, dtype, device, shapes, seed) -> None:
        resolve(self.cases)(res, dtype, device, shapes, seed)


def run_check(
    kernel: CheckedKernel, dtype: torch.dtype, device: torch.device, mode: str, seed: int = 0
) -> CheckResult:
    """Run ``kernel``'s self-check cases for one dtype on ``device`` (``mode``: a key of
    :data:`SHAPES`: quick | launch | full).
    Any exception (a compile error, a launch failure) is a failed check, not a crash."""
    if mode not in SHAPES:
        raise ValueError(
            f"selfcheck: argument 'mode' must be one of {sorted(SHAPES)}, got {mode!r}"
        )
    res = CheckResult(kernel.name, dtype_label(dtype))
    start = time.perf_counter()
    try:
        res.source_hash = kernel.source_hash()
        kernel.run_cases(res, dtype, device, SHAPES[mode], seed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as err:  # noqa: BLE001 - a kernel that cannot run has failed its check
        res.fail(res.cases[-1] if res.cases else "launch", f"{type(err).__name__}: {err}"[:300])
    res.seconds = time.perf_counter() - start
    return res
