"""Which implementation an op runs: the Triton kernel, the compiled CPU kernel or the reference.

This module decides per call from the backend setting, the tensor's device and dtype, and the
launch gate of :mod:`kernels.verdicts` (a kernel whose self-check failed on this GPU is not
launched). It knows no op by name: an op passes the :class:`kernels.checking.CheckedKernel` it
would launch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from . import native, verdicts
from ._common import FLOAT_DTYPES, interpreter_active
from .checking import CheckedKernel

__all__ = ["backend", "runs_native", "runs_triton", "use_backend"]

_BACKENDS = ("auto", "torch", "triton", "native", "reference")  # "reference": old name of "torch"
_backend_override: str | None = None


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
    value = _backend_override or _environment_backend()
    return "torch" if value == "reference" else value


def _environment_backend() -> str:
    """``CLUSTERVIG_BACKEND`` (default ``auto``), or a ``ValueError`` naming the accepted values."""
    value = os.environ.get("CLUSTERVIG_BACKEND", "auto").lower()
    if value not in _BACKENDS:
        raise ValueError(f"CLUSTERVIG_BACKEND must be one of {_BACKENDS[:4]}, got {value!r}")
    return value


def check_environment() -> None:
    """Raise a ``ValueError`` naming the variable and its accepted values when
    ``CLUSTERVIG_BACKEND`` or ``CLUSTERVIG_SELFCHECK`` is set to something else. The command
    lines call it first, so that a typo is a one-line error before any work (the CPU fast path
    would otherwise never read the backend, and benchmarks record failed rows instead)."""
    from .verdicts import selfcheck_setting

    _environment_backend()
    selfcheck_setting()


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


def runs_triton(t: torch.Tensor, kernel: CheckedKernel) -> bool:
    """Whether an op on ``t`` launches ``kernel`` (else its CPU kernel or reference).

    A kernel whose self-check verdict on this device is a failure is not launched.
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
            f"{kernel.name}: the Triton kernels take float32, float16 or bfloat16 features, got "
            f"{str(t.dtype).replace('torch.', '')} on {t.device}"
        )
    if not t.is_cuda and not interpreter_active():
        raise RuntimeError(
            "backend 'triton' on CPU tensors needs the Triton interpreter: set "
            "TRITON_INTERPRET=1 before importing the kernels package"
        )
    return verdicts.kernel_allowed(kernel, t)


def runs_native(t: torch.Tensor) -> bool:
    """Whether an op on the CPU tensor ``t`` runs its compiled CPU kernel (:mod:`kernels.native`;
    all but ``permute_rows`` and the aggregation's backward have one) rather than the PyTorch
    reference. Builds the kernels on the first call; raises RuntimeError under backend
    ``native`` if they cannot be built."""
    choice = backend()
    if t.device.type != "cpu" or choice not in ("auto", "native") or t.dtype == torch.float64:
        return False
    if choice == "native":
        native.require()
        return True
    return native.available()
