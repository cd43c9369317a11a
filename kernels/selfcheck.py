"""Every Triton kernel checked against its PyTorch reference on the device it runs on.

No kernel of this project is known to be right on a GPU nobody here has used, so each checks
itself where it lands::

    python -m kernels.selfcheck               # every kernel on this GPU, the models' launch shapes
    python -m kernels.selfcheck --quick       # the small first-use check (every code path)
    python -m kernels.selfcheck --mode launch --dtypes bfloat16   # CViG-Ti's and B-dagger's shapes
    python -m kernels.selfcheck --interpret   # on the CPU under the Triton interpreter

Inputs are built so that the expected answer is unique (integer-valued features whose distances
are exact in every dtype, exact ties resolved by the shared lowest-index rule, well-separated
clusters) and cover ragged partitions, empty ones and ones smaller than K, batch 1, N that is
not a power of two, fp32/fp16/bf16, and non-finite values (NaN and Inf rows: indices must stay
valid, NaN must propagate, the other images must be unaffected). Outputs are poisoned first,
so an unwritten element fails.

Each op's cases live in its folder (``kernels/<op>/cases.py``), built with the helpers of
:mod:`kernels.checking`; this module runs them for every kernel of :mod:`kernels.registry` and
is the command line. Verdicts are recorded per kernel and dtype (``"kmeans/bfloat16"``) for this
GPU and Triton version in the per-GPU cache, with the kernels' source hash: an edited kernel is
checked again, each as soon as it is decided (a check killed half way keeps the verdicts it
reached). ``python -m autotune --gpu`` runs the full check first. At launch the gate of
:mod:`kernels.verdicts` reads them: a failed verdict makes the op run its PyTorch reference on
the GPU instead, with one warning; a missing verdict triggers the quick check on first use in
the process (``CLUSTERVIG_SELFCHECK``: ``auto``, ``on``, ``off``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from . import checking, registry, tuning_cache
from ._common import FLOAT_DTYPES, dtype_label, interpreter_active, package_version
from .backend import check_environment
from .checking import CheckResult
from .verdicts import KernelSelfCheckWarning, device_name, kernel_allowed, record, reset

__all__ = [
    "KERNELS",
    "CheckResult",
    "KernelSelfCheckWarning",
    "check",
    "check_all",
    "dtypes_of",
    "kernel_allowed",
    "main",
    "record",
    "reset",
]

#: Kernel names as the verdicts know them, in the order a DEGC layer runs them.
KERNELS = tuple(registry.KERNELS)
DTYPES_BY_LABEL = {dtype_label(d): d for d in FLOAT_DTYPES}


def dtypes_of(kernel: str) -> tuple[torch.dtype, ...]:
    """The dtypes a kernel is checked (and its verdicts recorded) for."""
    return registry.kernel(kernel).dtypes


def check(
    kernel: str, dtype: torch.dtype, device: torch.device, mode: str = "quick", seed: int = 0
) -> CheckResult:
    """Run one kernel's self-check for one dtype on ``device`` (``mode``: quick | launch | full,
    the keys of :data:`kernels.checking.SHAPES`).

    Any exception (a compile error, a launch failure) is a failed check, not a crash.
    """
    return checking.run_check(registry.kernel(kernel), dtype, device, mode, seed)


def check_all(
    device: torch.device,
    mode: str = "full",
    kernels: tuple[str, ...] = KERNELS,
    on_result: Callable[[CheckResult], None] | None = None,
    dtypes: tuple[torch.dtype, ...] | None = None,
) -> list[CheckResult]:
    """Every kernel, every dtype it takes (or those of ``dtypes`` it takes; an index kernel,
    which takes no float dtype, is checked once anyway); ``on_result`` sees each result as it
    completes."""
    results = []
    for kernel in kernels:
        for dtype in _selected(dtypes_of(kernel), dtypes):
            res = check(kernel, dtype, device, mode)
            results.append(res)
            if on_result is not None:
                on_result(res)
    return results


def _selected(
    takes: tuple[torch.dtype, ...], wanted: tuple[torch.dtype, ...] | None
) -> tuple[torch.dtype, ...]:
    if wanted is None or not any(d.is_floating_point for d in takes):
        return takes
    return tuple(d for d in takes if d in wanted)


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


def _parser() -> argparse.ArgumentParser:
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
        "--mode",
        choices=tuple(checking.SHAPES),
        help="the shapes to check: quick (small, every code path), launch (the shapes CViG-Ti "
        "and CViG-B-dagger launch, nothing else), full (every model's; the default on a GPU)",
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=[dtype_label(d) for d in FLOAT_DTYPES],
        metavar="DTYPE",
        help="float dtypes to check (default: every one a kernel takes: "
        + ", ".join(dtype_label(d) for d in FLOAT_DTYPES)
        + ")",
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the results here, row by row"
    )
    parser.add_argument(
        "--kernels", nargs="+", choices=KERNELS, metavar="KERNEL", help="kernels (default: all)"
    )
    parser.add_argument(
        "--no-record", action="store_true", help="print the verdicts without recording them"
    )
    parser.add_argument("--version", action="version", version=package_version())
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    try:
        check_environment()
    except ValueError as err:
        print(f"python -m kernels.selfcheck: {err}", file=sys.stderr)
        return 2
    if args.quick and args.mode not in (None, "quick"):
        parser.error(f"argument --quick: not allowed with --mode {args.mode}")
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
    mode = args.mode or ("quick" if (args.quick or args.interpret) else "full")
    dtypes = None if args.dtypes is None else tuple(DTYPES_BY_LABEL[d] for d in args.dtypes)
    results: list[CheckResult] = []
    try:
        rows = _JsonRows(args.json, device, mode) if args.json else None
    except OSError as err:
        print(
            f"python -m kernels.selfcheck: cannot write --json {args.json}: {err}", file=sys.stderr
        )
        return 2
    print(
        f"self-check on {device_name(device)}, triton {tuning_cache.triton_version()}, "
        f"{mode} shapes"
    )

    def show(res: CheckResult) -> None:
        if not results:
            print(next(_rows([])), flush=True)
        results.append(res)
        if not args.no_record:  # now: a check killed later keeps this verdict
            record([res], device, mode)
        if rows is not None:
            rows.add(res)
        print(list(_rows([res]))[1], flush=True)  # printed: recorded

    with warnings.catch_warnings():
        # numpy inside the interpreter reports the NaN/Inf the non-finite cases feed it
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="triton")
        check_all(device, mode, tuple(args.kernels or KERNELS), on_result=show, dtypes=dtypes)
    failed = [r for r in results if not r.ok]
    print(
        f"\n{len(results) - len(failed)} of {len(results)} kernel/dtype checks passed"
        + (f"; failed: {', '.join(f'{r.kernel}/{r.dtype}' for r in failed)}" if failed else "")
    )
    return 1 if failed else 0


class _JsonRows:
    """The results as a JSON file rewritten (atomically) after every row."""

    def __init__(self, path: Path, device: torch.device, mode: str) -> None:
        if not path.parent.is_dir():  # a typo in a path must not create folders
            raise FileNotFoundError(f"no folder {str(path.parent)!r}")
        self.path = path
        self.data = {
            "device": device_name(device),
            "triton": tuning_cache.triton_version(),
            "torch": torch.__version__,
            "mode": mode,
            "rows": [],
        }
        self._write()

    def add(self, res: CheckResult) -> None:
        self.data["rows"].append(dataclasses.asdict(res))
        self._write()

    def _write(self) -> None:
        tuning_cache.atomic_write_json(self.path, self.data)


if __name__ == "__main__":
    sys.exit(main())
