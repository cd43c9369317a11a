"""Shared helpers for the kernel package: argument validation, dtype tables, backend selection.

Every public op validates its arguments here so that a bad call fails with a ``ValueError`` that
names the op, the argument and what is accepted, instead of a shape error deep inside a kernel.
Validation reads shapes and dtypes only: nothing here syncs with a device.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import torch

#: Feature dtypes of the Triton kernels.
FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)
#: Feature dtypes the ops accept: float64 runs on the reference path only (gradcheck, oracles).
OP_DTYPES: tuple[torch.dtype, ...] = FLOAT_DTYPES + (torch.float64,)
INDEX_DTYPE = torch.int32

#: The largest K that ``partition_knn`` and ``max_aggregate`` support (the model uses 9..18).
MAX_NEIGHBORS = 32
#: The largest kappa (the paper uses at most 6); the kernels are compiled and checked for it.
MAX_CLUSTERS = 16


#: Up to this many rows the CPU graph ops (k-NN, eval aggregation; k-means always) run on one
#: thread: their ops take a few hundred microseconds at most, and with passive OpenMP waiting
#: (``OMP_WAIT_POLICY=PASSIVE``, what a shared machine needs) every parallel op first pays to
#: wake the other threads.
SINGLE_THREAD_ROWS = 4096


@contextlib.contextmanager
def one_cpu_thread(x: torch.Tensor, enabled: bool = True) -> Iterator[None]:
    """Run the block on one CPU thread when ``x`` is a CPU tensor and ``enabled`` (no-op under
    ``torch.compile``, which cannot trace a change of the thread count). The thread count is
    process-wide: other Python threads running torch ops meanwhile run on one thread too."""
    if not enabled or x.device.type != "cpu" or torch.compiler.is_compiling():
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def dtype_label(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).replace("torch.", "")


def _dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    return ", ".join(dtype_label(d) for d in dtypes)


def check_tensor(
    op: str,
    name: str,
    t: object,
    *,
    ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Validate one tensor argument and return it.

    Raises ``ValueError`` naming ``op`` and ``name`` with the accepted rank / dtypes / device.
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{op}: argument '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(
            f"{op}: argument '{name}' must have {ndim} dimensions, got shape {tuple(t.shape)}"
        )
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(
            f"{op}: argument '{name}' must have dtype in ({_dtype_names(dtypes)}), got "
            f"{str(t.dtype).replace('torch.', '')}"
        )
    if device is not None and t.device != device:
        raise ValueError(
            f"{op}: argument '{name}' must be on {device} (the device of the first input), "
            f"got {t.device}"
        )
    return t


def check_int(
    op: str, name: str, value: object, *, low: int, high: int | None = None
) -> int | torch.SymInt:
    """Validate an integer argument in ``[low, high]`` (``high`` inclusive, ``None`` = unbounded).

    A ``torch.SymInt`` (a shape under ``torch.compile`` with dynamic shapes) is checked too.
    """
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise ValueError(f"{op}: argument '{name}' must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{op}: argument '{name}' must be in {bound}, got {value}")
    return value


# --------------------------------------------------------------------------------------------
# Backend selection
# --------------------------------------------------------------------------------------------
_BACKENDS = ("auto", "torch", "triton", "native", "reference")  # "reference": old name of "torch"
_backend_override: str | None = None


def interpreter_active() -> bool:
    """True when Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def backend() -> str:
    """The backend the ops use: ``auto`` (default), ``torch``, ``triton`` or ``native``.

    - ``auto``: CUDA tensors run the Triton kernels (except a kernel whose self-check failed on
      this GPU, see :mod:`kernels.selfcheck`); CPU tensors the compiled CPU kernels of
      k-means, the partition order, k-NN and the aggregation's forward (:mod:`kernels.native`,
      built on first use) where a C compiler can build them, and the PyTorch references for
      everything else.
    - ``torch``: the PyTorch references on every device (a pure-PyTorch ClusterViG).
    - ``triton``: the kernels on CUDA, and on CPU tensors under the Triton interpreter.
    - ``native``: as ``auto``, but an error instead of the references when the compiled CPU
      kernels cannot be built (tests and benchmarks that must measure them).

    float64 CPU tensors always run the references (the oracles of the tests).

    Set with :func:`use_backend` or the environment variable ``CLUSTERVIG_BACKEND``.
    """
    value = (_backend_override or os.environ.get("CLUSTERVIG_BACKEND", "auto")).lower()
    if value not in _BACKENDS:
        raise ValueError(f"CLUSTERVIG_BACKEND must be one of {_BACKENDS[:4]}, got {value!r}")
    return "torch" if value == "reference" else value


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily choose the backend (``auto``, ``torch``, ``triton`` or ``native``; see
    :func:`backend`)."""
    global _backend_override
    if not isinstance(name, str) or name.lower() not in _BACKENDS:
        raise ValueError(
            f"use_backend: argument 'name' must be one of {_BACKENDS[:4]}, got {name!r}"
        )
    previous, _backend_override = _backend_override, name.lower()
    try:
        yield
    finally:
        _backend_override = previous


#: The :class:`kernels.launches.LaunchRecorder` while :func:`kernels.launches.record_launches`
#: runs: ops on ``meta`` tensors then take their Triton path, and their launches are recorded.
_launch_recorder = None


def set_launch_recorder(recorder):
    """Install ``recorder`` (or None); returns the previous one."""
    global _launch_recorder
    previous, _launch_recorder = _launch_recorder, recorder
    return previous


def recording_launches(t: torch.Tensor, op: str) -> bool:
    """Whether the op ``op`` on ``t`` is being recorded (a ``meta`` tensor inside
    :func:`kernels.launches.record_launches`): its fake implementation then runs the Triton
    launcher, whose launches are recorded instead of run."""
    if _launch_recorder is None or t.device.type != "meta":
        return False
    _launch_recorder.op = op
    return True


def target_capability(t: torch.Tensor) -> tuple[int, int] | None:
    """The compute capability the kernels on ``t`` compile for: its CUDA device's, the one a
    launch recording stands for (``record_launches(capability=...)``, meta tensors), else
    None (CPU tensors under the interpreter)."""
    if t.is_cuda:
        return torch.cuda.get_device_capability(t.device)
    if t.device.type == "meta" and _launch_recorder is not None:
        return _launch_recorder.capability
    return None


def runs_triton(t: torch.Tensor, op: str = "op") -> bool:
    """Whether the op ``op`` on ``t`` launches its Triton kernel (else the PyTorch reference).

    ``op`` is the kernel's name in the tuning cache (``kmeans``, ``max_aggregate_backward``...):
    a kernel whose self-check verdict on this device is a failure is not launched.
    """
    choice = backend()
    if choice == "torch":
        return False
    use = t.is_cuda or (t.device.type == "cpu" and choice == "triton")
    if not use:
        return False
    if t.is_floating_point() and t.dtype not in FLOAT_DTYPES:
        if t.device.type == "cpu":
            return False  # float64 on the CPU: the reference, whatever the backend
        raise ValueError(
            f"{op}: the Triton kernels take float32, float16 or bfloat16 features, got "
            f"{str(t.dtype).replace('torch.', '')} on {t.device}"
        )
    if not t.is_cuda and not interpreter_active():
        raise RuntimeError(
            "backend 'triton' on CPU tensors needs the Triton interpreter: set "
            "TRITON_INTERPRET=1 before importing the kernels package"
        )
    from . import selfcheck  # lazy: selfcheck imports the kernel modules (and so Triton)

    return selfcheck.kernel_allowed(op, t)


def dot_precision(dtype: torch.dtype) -> tuple[str, bool]:
    """``(input_precision, upcast)`` for a kernel's ``tl.dot`` on inputs of ``dtype``.

    float32 products use full IEEE precision (no TF32 rounding: neighbour and cluster choices
    then agree with the float32 reference); fp16/bf16 run on the tensor cores with float32
    accumulation. ``upcast`` works around the Triton interpreter, whose bf16 ``tl.dot`` returns
    garbage: under the interpreter bf16 operands are converted to float32 first.
    """
    upcast = dtype == torch.bfloat16 and interpreter_active()
    return ("ieee" if dtype == torch.float32 else "tf32"), upcast


def package_version() -> str:
    """``clustervig <version>`` of the installed distribution (for the CLIs' --version)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"clustervig {version('clustervig')}"
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "clustervig (not installed)"


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def runs_native(t: torch.Tensor) -> bool:
    """Whether an op on the CPU tensor ``t`` runs its compiled CPU kernel (:mod:`kernels.native`;
    all but ``permute_rows`` and the aggregation's backward have one) rather than the PyTorch
    reference. Builds the kernels on the first call; raises RuntimeError under backend
    ``native`` if they cannot be built."""
    choice = backend()
    if t.device.type != "cpu" or choice not in ("auto", "native") or t.dtype == torch.float64:
        return False
    from . import native  # lazy: native imports the references, which import this module

    if choice == "native":
        native.require()
        return True
    return native.available()
