"""One way to define an op: its schema declared once, the custom op, fake and fast path derived.

Every op of the package (``kernels/<op>/op.py``) is an :class:`Op` made by :func:`define_op`
from the :class:`kernels.checking.CheckedKernel` it launches, its schema, and three functions
that all take the op's arguments in schema order:

- ``check``: argument validation (shapes and dtypes only; nothing reads a device's values);
- ``fallback``: the compiled CPU kernel where it runs, else the PyTorch reference (any device);
- ``fake``: empty outputs of the right shapes, for ``torch.compile`` and meta tensors (by
  default one output shaped like the first argument).

The kernel's Triton launcher (``CheckedKernel.launcher``, ``"module:function"``) is imported on
first use (it imports Triton) and resolved at every call, so that a test's monkeypatch reaches
the op. The op's name is the kernel's.

The derived pieces: the ``torch.library`` custom op ``clustervig::<name>`` (its implementation
launches the Triton kernel when :func:`kernels.backend.runs_triton` says so, else the fallback),
its fake (which runs the launcher inside :func:`kernels.launches.record_launches`, so the
launches are recorded), optional autograd, and :meth:`Op.__call__`, the public entry: eager
calls on CPU tensors that nobody traces skip the dispatcher.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from ._common import launch_recorder, recording_launches, resolve
from .backend import backend, runs_native, runs_triton
from .checking import CheckedKernel

__all__ = ["CheckedKernel", "Op", "concrete_sum", "define_op", "native_or_reference"]


def _cpu_directly(x: torch.Tensor, differentiable: bool) -> bool:
    """Whether a call on ``x`` may skip the custom op and run its fallback directly.

    The dispatcher costs ~20 us a call, a percent or two of a batch-1 CPU forward over five ops
    a layer. Skipping it changes nothing only when nobody looks: a CPU tensor in eager mode with
    a backend other than ``triton``, no gradient to record (``differentiable`` ops), and nothing
    tracing or intercepting the call (torch.compile, torch.jit.trace, a dispatch mode such as
    the FLOP counter or fake tensors).
    """
    return (
        x.device.type == "cpu"
        and not (differentiable and x.requires_grad and torch.is_grad_enabled())
        and backend() != "triton"
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and _get_current_dispatch_mode() is None
    )


def _like_first_argument(first: torch.Tensor, *rest) -> torch.Tensor:
    """The default fake: one output of the first argument's shape, dtype and device."""
    return first.new_empty(first.shape)


class Op:
    """A DEGC op: see the module docstring. Call it with the op's arguments in schema order."""

    def __init__(
        self,
        kernel: CheckedKernel,
        schema: str,
        *,
        check: Callable,
        fallback: Callable,
        fake: Callable | None = None,
        kernel_applies: Callable[..., bool] | None = None,
        autograd: tuple[Callable, Callable] | None = None,
    ) -> None:
        name = self.name = kernel.name
        self.check = check
        self.fallback = fallback
        self.kernel = kernel
        self._kernel_applies = kernel_applies
        self._fake = fake or _like_first_argument
        self.differentiable = autograd is not None
        parsed = torch._C.parse_schema(f"clustervig::{name}{schema}")
        #: Defaults of the trailing arguments, filled in for a call that leaves them out.
        self._defaults = [
            a.default_value if a.has_default_value() else None for a in parsed.arguments
        ]
        self.custom_op = torch.library.custom_op(
            f"clustervig::{name}", self._implementation, mutates_args=(), schema=schema
        )
        self.custom_op.register_fake(self._fake_implementation)
        if autograd is not None:
            backward, setup_context = autograd
            self.custom_op.register_autograd(backward, setup_context=setup_context)

    def launch(self, *args):
        """The Triton launcher on the op's arguments."""
        return resolve(self.kernel.launcher)(*args)

    def _complete(self, args: tuple) -> tuple:
        return (*args, *self._defaults[len(args) :])

    def _implementation(self, *args):
        args = self._complete(args)
        self.check(*args)
        applies = self._kernel_applies is None or self._kernel_applies(*args)
        if applies and runs_triton(args[0], self.kernel):
            return self.launch(*args)
        return self.fallback(*args)

    def _fake_implementation(self, *args):
        args = self._complete(args)
        self.check(*args)
        if recording_launches(args[0], self.name):
            with launch_recorder().watching_host_tensors():
                return self.launch(*args)
        return self._fake(*args)

    def __call__(self, *args):
        args = self._complete(args)
        if _cpu_directly(args[0], self.differentiable):
            self.check(*args)
            return self.fallback(*args)
        return self.custom_op(*args)


def define_op(kernel: CheckedKernel, schema: str, **parts) -> Op:
    """``Op(kernel, schema, check=..., fallback=..., fake=...)``: the op ``clustervig::<name>``
    (the kernel's name) with the schema ``"(Tensor x, int k) -> Tensor"``, launching
    ``kernel``."""
    return Op(kernel, schema, **parts)


def concrete_sum(t: torch.Tensor) -> int | None:
    """``int(t.sum())``, or None for a fake / meta tensor (no data): FLOP formulas that read
    an op's real outputs fall back to a bound then."""
    try:
        return int(t.sum())
    except Exception:  # noqa: BLE001 - fake and meta tensors raise several kinds
        return None


def native_or_reference(native: Callable, reference: Callable) -> Callable:
    """A fallback: ``native(*args)`` where the compiled CPU kernels run for the first argument
    (:func:`kernels.backend.runs_native`), else ``reference(*args)``."""

    def fallback(*args):
        if runs_native(args[0]):
            return native(*args)
        return reference(*args)

    fallback.__doc__ = f"{native.__qualname__} where it runs, else {reference.__qualname__}."
    return fallback
