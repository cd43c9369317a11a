"""Every op and kernel of the package, listed once, at the top of the package.

Tools that work on every kernel (the self-check, the ahead-of-time resource survey, the tuner,
the static report) read this list; nothing below it imports it, and no op registers itself
(``tests/test_layering.py``). An op's folder says everything else about it: a new op is a folder
and a line here.
"""

from __future__ import annotations

from .aggregate import MAX_AGGREGATE, MAX_AGGREGATE_BACKWARD
from .center import CENTER_TOKENS
from .epilogue import SEGMENT_NORM_GELU
from .gatv2 import GATV2_ATTENTION
from .kmeans import KMEANS
from .knn import PARTITION_KNN
from .opdef import CheckedKernel, Op
from .partition import PARTITION, PERMUTE_ROWS

__all__ = ["KERNELS", "OPS", "kernel", "kernel_of", "tunable_names", "tunables"]

#: The ops, in the order a DEGC layer runs them (the aggregation's backward last).
OPS: tuple[Op, ...] = (
    CENTER_TOKENS,
    KMEANS,
    PARTITION,
    PERMUTE_ROWS,
    PARTITION_KNN,
    MAX_AGGREGATE,
    GATV2_ATTENTION,
    MAX_AGGREGATE_BACKWARD,
    SEGMENT_NORM_GELU,
)

#: The checked kernels by name (the self-check's and the verdicts' keys), in the same order.
KERNELS: dict[str, CheckedKernel] = {op.kernel.name: op.kernel for op in OPS}


def kernel(name: str) -> CheckedKernel:
    """The checked kernel ``name``; a ``ValueError`` naming the known ones otherwise."""
    if name not in KERNELS:
        raise ValueError(
            f"selfcheck: argument 'kernel' must be one of {tuple(KERNELS)}, got {name!r}"
        )
    return KERNELS[name]


def tunables() -> dict:
    """Every :class:`kernels.tuning.Tunable` by name, sorted (imports the kernel modules, and
    so Triton)."""
    found = {t.name: t for k in KERNELS.values() for t in k.load_tunables()}
    return dict(sorted(found.items()))


def tunable_names() -> tuple[str, ...]:
    """Every tunable's name, sorted, without importing the kernel modules (nor Triton)."""
    return tuple(sorted(name for k in KERNELS.values() for name in k.tunables))


def kernel_of(tunable: str) -> CheckedKernel:
    """The checked kernel whose verdict covers the tunable ``tunable``."""
    for checked in KERNELS.values():
        if tunable in checked.tunables:
            return checked
    raise ValueError(f"no kernel has a tunable named {tunable!r}; known: {tunable_names()}")
