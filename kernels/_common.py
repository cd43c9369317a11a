"""The bottom of the kernel package: limits, argument validation, dtype helpers, launch-recording
state. It imports nothing of the package (``tests/test_layering.py``).

Every public op validates its arguments here so that a bad call fails with a ``ValueError`` that
names the op, the argument and what is accepted, instead of a shape error deep inside a kernel.
Validation reads shapes and dtypes only: nothing here syncs with a device.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
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


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the references compute in: float64 for float64 inputs (oracle mode), float32
    otherwise (the CPU path of the model should not pay for float64)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


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


def interpreter_active() -> bool:
    """True when Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def mend_interpreter_scalars() -> bool:
    """Let Triton 3.6's interpreter use scalar arguments as Python ints under NumPy >= 2.4.

    The interpreter holds a scalar kernel argument as a one-element 1-D array and converts it
    for ``range(0, N, BLOCK)`` with ``int(array)``, which NumPy 2.4 turned from a deprecation
    into ``TypeError: only 0-dimensional arrays can be converted to Python scalars``: every
    kernel that loops to a runtime bound failed (the GPU image has NumPy 2.5). Triton 3.7+
    converts the squeezed array; for older versions the interpreter's tensor patch is wrapped
    to do the same. Returns whether it mended anything (only interpreters that need it)."""
    try:
        from triton.runtime import interpreter
    except ImportError:  # pragma: no cover - Triton is a dependency
        return False
    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "mends_scalars", False):
        return False
    try:
        import inspect

        if "squeeze" in inspect.getsource(patch):  # this Triton converts scalars itself
            return False
    except (OSError, TypeError):
        pass

    def patch_lang_tensor(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patch_lang_tensor.mends_scalars = True
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True


# --------------------------------------------------------------------------------------------
# Launch recording (the state :mod:`kernels.launches` installs; the ops' fakes read it)
# --------------------------------------------------------------------------------------------
#: The :class:`kernels.launches.LaunchRecorder` while :func:`kernels.launches.record_launches`
#: runs: ops on ``meta`` tensors then take their Triton path, and their launches are recorded.
_launch_recorder = None


def set_launch_recorder(recorder):
    """Install ``recorder`` (or None); returns the previous one."""
    global _launch_recorder
    previous, _launch_recorder = _launch_recorder, recorder
    return previous


def launch_recorder():
    """The :class:`kernels.launches.LaunchRecorder` installed now, or None."""
    return _launch_recorder


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


def resolve(path: str):
    """The object ``"package.module:attribute"`` names (the module imported on first use)."""
    module, _, attribute = path.partition(":")
    # Each launch resolves its launcher (so a monkeypatch reaches it): the loaded module is a
    # dict lookup, not a trip through the import machinery.
    loaded = sys.modules.get(module) or importlib.import_module(module)
    return getattr(loaded, attribute)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


if interpreter_active():
    mend_interpreter_scalars()
