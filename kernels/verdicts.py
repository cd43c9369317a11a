"""Self-check verdicts: where they are stored, and the gate that reads them at launch.

Verdicts are recorded per kernel and dtype (``"kmeans/bfloat16"``) for this GPU and Triton
version in the per-GPU cache (:mod:`kernels.tuning_cache`), with the source hash of the kernels
they cover: an edited kernel is checked again. At launch (:func:`kernel_allowed`): a failed
verdict makes the op run its PyTorch reference on the GPU instead, with one warning; a missing
verdict triggers the quick check on first use in the process (a few seconds, once per kernel and
dtype). ``CLUSTERVIG_SELFCHECK`` controls that first-use check: ``auto`` (default: on CUDA
devices), ``on`` (also under the interpreter), ``off`` (never; recorded verdicts still apply).

The checks themselves are each op's cases (``kernels/<op>/cases.py``), run by
:func:`kernels.checking.run_check`; ``python -m kernels.selfcheck`` runs them all.
"""

from __future__ import annotations

import datetime as _dt
import os
import warnings

import torch

from . import checking, tuning_cache
from ._common import dtype_label
from .checking import CheckedKernel, CheckResult

__all__ = [
    "ENV_SELFCHECK",
    "KernelSelfCheckWarning",
    "first_use_check_enabled",
    "kernel_allowed",
    "record",
    "recorded_verdict",
    "reset",
]

ENV_SELFCHECK = "CLUSTERVIG_SELFCHECK"


class KernelSelfCheckWarning(UserWarning):
    """A kernel failed its self-check on this device; its op runs the PyTorch reference."""


def _verdict_key(kernel: str, dtype: str) -> str:
    return f"{kernel}/{dtype}"


def _device_key(device: torch.device) -> tuple:
    return (device.type, device.index)


_session_verdicts: dict[tuple, dict] = {}
_allowed: dict[tuple, bool] = {}


def reset() -> None:
    """Forget this process's verdicts and launch decisions (tests; after a new check)."""
    _session_verdicts.clear()
    _allowed.clear()


def record(results: list[CheckResult], device: torch.device, mode: str) -> None:
    """Store verdicts in the per-GPU cache (an unwritable cache keeps them for this process)."""
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    verdicts = {
        _verdict_key(r.kernel, r.dtype): {
            "ok": r.ok,
            "source_hash": r.source_hash,
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


def recorded_verdict(
    kernel: CheckedKernel, dtype: torch.dtype, device: torch.device
) -> dict | None:
    """The verdict for this kernel, dtype and device, if one was recorded for today's source."""
    key = _verdict_key(kernel.name, dtype_label(dtype))
    verdict = _session_verdicts.get((_device_key(device), key))
    if verdict is None:
        verdict = tuning_cache.load_verdicts(device).get(key)
    if not isinstance(verdict, dict) or verdict.get("source_hash") != kernel.source_hash():
        return None
    return verdict


_SELFCHECK_OFF = ("off", "0", "false", "no")
_SELFCHECK_ON = ("on", "1", "true", "yes")


def selfcheck_setting() -> str:
    """``auto``, ``on`` or ``off`` from ``CLUSTERVIG_SELFCHECK`` (a ``ValueError`` naming the
    accepted values for anything else: a typo must not silently mean ``auto``)."""
    value = os.environ.get(ENV_SELFCHECK, "auto").strip().lower()
    if value in _SELFCHECK_OFF:
        return "off"
    if value in _SELFCHECK_ON:
        return "on"
    if value in ("auto", ""):
        return "auto"
    raise ValueError(
        f"{ENV_SELFCHECK} must be auto, on or off (or 1/0, true/false, yes/no), got {value!r}"
    )


def first_use_check_enabled(device: torch.device) -> bool:
    setting = selfcheck_setting()
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def kernel_allowed(kernel: CheckedKernel, t: torch.Tensor) -> bool:
    """Whether ``kernel`` may launch for the tensor ``t`` (its device and dtype).

    A recorded failure -> False (with one warning per kernel and dtype); no verdict -> the quick
    check runs once in this process when enabled (see the module docstring) and is recorded.
    """
    dtype = t.dtype if t.is_floating_point() else torch.int32
    key = (kernel.name, dtype, _device_key(t.device))
    allowed = _allowed.get(key)
    if allowed is not None:
        return allowed
    verdict = recorded_verdict(kernel, dtype, t.device)
    if verdict is None and t.is_cuda and torch.cuda.is_current_stream_capturing():
        return True  # inside CUDA-graph capture nothing may synchronise: check on a later call
    if verdict is None and first_use_check_enabled(t.device):
        result = checking.run_check(kernel, dtype, t.device, "quick")
        record([result], t.device, "quick")
        verdict = {"ok": result.ok, "detail": result.detail}
    allowed = verdict is None or bool(verdict.get("ok"))
    if not allowed:
        warnings.warn(
            f"clustervig: the Triton kernel '{kernel.name}' failed its self-check for "
            f"{dtype_label(dtype)} on {device_name(t.device)} (triton "
            f"{tuning_cache.triton_version()}): "
            f"{verdict.get('detail') or 'see python -m kernels.selfcheck'}. Its op runs the "
            "PyTorch reference on this device instead (same results, slower). Please report "
            "this, with the output of `python -m kernels.selfcheck`, in the project's issue "
            "tracker.",
            KernelSelfCheckWarning,
            stacklevel=5,
        )
    _allowed[key] = allowed
    return allowed


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "the CPU (Triton interpreter)"
