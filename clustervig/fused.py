"""Fused inference layers: a convolution, its GELU and a residual add as one CPU op.

The inference form (:func:`clustervig.deploy`) folds every eval batch norm into its convolution
(:meth:`clustervig.layers.ConvBN.fuse`); what is left of ``conv -> GELU`` and ``x + conv(h)``
on a CPU is one more pass over the activations each. oneDNN runs the activation and the add
inside the convolution (its post-ops, the fusions ``torch.compile`` uses on CPUs, exposed as
``torch.ops.mkldnn._convolution_pointwise``), which measured 1.3-1.4x faster than the three ops
for CViG-Ti's FFN at batch 1 and 8 on 2 threads.

That op is not public API, so it is used only where it has been seen to work: CPU float32
tensors without gradient, eager mode (not while exporting, scripting, tracing, compiling, under
CPU autocast or a dispatch mode such as the FLOP counter, which take the standard ops), after a
one-time probe in the process compared it with the standard ops. The local update's row
products use the same convolution (:func:`multiply_rows`: rows ``(M, C)`` are a channels-last
``1 x M`` map).
Anywhere else :class:`ConvAct` runs ``conv2d -> gelu -> + residual`` as separate ops.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = [
    "ConvAct",
    "can_multiply_rows",
    "cache_stamp",
    "multiply_rows",
    "onednn_fusion_available",
]


def cache_stamp(t: Tensor) -> tuple:
    """What an inference cache built from ``t`` is valid for: its storage, version counter,
    dtype and device. A tensor made under ``torch.inference_mode`` (a model built or deployed
    there) has no version counter: its stamp holds ``None`` instead, so an in-place change of
    it inside inference mode goes unseen (it cannot be changed outside it)."""
    version = None if t.is_inference() else t._version
    return (t.data_ptr(), version, t.dtype, t.device)


def _reorder(weight: Tensor, padding, stride, dilation, groups: int, input_size) -> Tensor:
    """A 4-D convolution weight in oneDNN's blocked layout for inputs of ``input_size`` (reordered
    once: a reorder per call costs more than the convolution itself at batch 1); the plain
    weight where this build cannot reorder."""
    try:
        return torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight.detach().contiguous().to_mkldnn(),
            list(padding),
            list(stride),
            list(dilation),
            groups,
            list(input_size),
        )
    except (RuntimeError, AttributeError, NotImplementedError):
        return weight


def _eager_cpu_float32(x: Tensor) -> bool:
    """Whether a call on ``x`` may take oneDNN's fused ops: a CPU float32 tensor in eager mode
    (not scripting, tracing, compiling or exporting, no CPU autocast, no dispatch mode such as
    the FLOP counter or fake tensors), after the probe of :func:`onednn_fusion_available`."""
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if torch.onnx.is_in_onnx_export() or torch.is_autocast_enabled("cpu"):
        return False
    if _get_current_dispatch_mode() is not None:
        return False
    return x.device.type == "cpu" and x.dtype == torch.float32 and onednn_fusion_available()


@functools.cache
def onednn_fusion_available() -> bool:
    """Whether oneDNN's fused convolution (with GELU and with an add) runs here and matches the
    standard ops on a small probe (decided once per process)."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, 8, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last)
        w = torch.randn(8, 8, 1, 1, generator=gen).contiguous(memory_format=torch.channels_last)
        b = torch.randn(8, generator=gen)
        with torch.no_grad():
            # the weight as the layers pass it: reordered into oneDNN's blocked layout
            packed = _reorder(w, [0, 0], [1, 1], [1, 1], 1, x.shape)
            act = op(x, packed, b, [0, 0], [1, 1], [1, 1], 1, "gelu", [None], "none")
            add = op.binary(
                act, x, packed, b, [0, 0], [1, 1], [1, 1], 1, "add", 1.0, None, [], None
            )
            want_act = F.gelu(F.conv2d(x, w, b))
            want_add = x + F.conv2d(want_act, w, b)
        return bool(
            torch.allclose(act, want_act, rtol=1e-4, atol=1e-5)
            and torch.allclose(add, want_add, rtol=1e-4, atol=1e-5)
        )
    except (RuntimeError, TypeError, NotImplementedError, AttributeError):
        return False


class ConvAct(nn.Conv2d):
    """``Conv2d -> (GELU)`` of the inference form, ``(B, C_in, H, W) -> (B, C_out, H', W')``,
    with ``forward(x, residual)`` adding a residual ``(B, C_out, H', W')`` to the result
    (after the activation). Built from a trained convolution by :meth:`from_conv`."""

    def __init__(self, *args, gelu: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.gelu = gelu

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, gelu: bool = False) -> ConvAct:
        """A :class:`ConvAct` with ``conv``'s options, weight and bias (shared, not copied)."""
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                "ConvAct.from_conv: argument 'conv' must use numeric zero padding, got "
                f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}"
            )
        fused = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            device="meta",
            gelu=gelu,
        )
        fused.weight = conv.weight
        fused.bias = conv.bias
        return fused

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        if self._use_onednn(x, residual):
            args = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
            weight = self._packed_weight(x)
            if residual is None:
                attr = "gelu" if self.gelu else "none"
                algorithm = "none" if self.gelu else ""
                return torch.ops.mkldnn._convolution_pointwise(
                    x, weight, self.bias, *args, attr, [None], algorithm
                )
            if not self.gelu:
                return torch.ops.mkldnn._convolution_pointwise.binary(
                    x, residual, weight, self.bias, *args, "add", 1.0, None, [], None
                )
        y = super().forward(x)
        if self.gelu:
            y = F.gelu(y)
        return y if residual is None else residual + y

    def _packed_weight(self, x: Tensor) -> Tensor:
        """The weight in oneDNN's blocked layout for this convolution (:func:`_reorder`), again
        only when the weight changed (:func:`cache_stamp`); the first input's size picks the
        layout, and any other size runs with it."""
        key = cache_stamp(self.weight)
        cached = self.__dict__.get("_packed")
        if cached is None or cached[0] != key:
            args = (self.padding, self.stride, self.dilation, self.groups, x.shape)
            cached = self.__dict__["_packed"] = (key, _reorder(self.weight, *args))
        return cached[1]

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_packed", None)  # a cache in oneDNN's layout: rebuilt, never copied or saved
        return state

    def _use_onednn(self, x: Tensor, residual: Tensor | None) -> bool:
        if x.requires_grad or self.weight.requires_grad or not _eager_cpu_float32(x):
            return False
        return residual is None or (
            residual.dtype == torch.float32
            and not residual.requires_grad
            and residual.is_contiguous(memory_format=torch.channels_last)
            and x.is_contiguous(memory_format=torch.channels_last)
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + (", gelu=True" if self.gelu else "")


def _rows_as_map(rows: Tensor) -> Tensor:
    """Rows ``(M, L)``, contiguous, as the channels-last map ``(1, L, 1, M)`` they already are
    in memory (no copy)."""
    return rows.view(1, 1, rows.shape[0], rows.shape[1]).permute(0, 3, 1, 2)


def can_multiply_rows(x: Tensor, weight: Tensor) -> bool:
    """Whether :func:`multiply_rows` runs oneDNN's packed product here: float32 inference with no
    gradient recorded (:func:`_eager_cpu_float32`) on contiguous 2-D operands."""
    return (
        not torch.is_grad_enabled()
        and _eager_cpu_float32(x)
        and weight.dtype == torch.float32
        and x.dim() == 2
        and x.shape[0] > 0
        and x.is_contiguous()
        and weight.is_contiguous()
    )


def multiply_rows(x: Tensor, weight: Tensor, cache: dict, add: Tensor | None = None) -> Tensor:
    """``x @ weight.T (+ add)``: rows ``x (M, L)`` times ``weight (O, L)`` (plus ``add (M, O)``
    contiguous) as oneDNN's 1x1 convolution of the rows seen as a channels-last map, the weight
    reordered once into its blocked layout and kept in ``cache`` (by the weight tensor, which
    must not be changed in place afterwards) and the add done inside the product. Measured
    against MKL's ``linear`` / ``addmm`` on 2 threads for CViG-Ti's local update (196 and 1568
    rows of 192 -> 384): 1.5x and 3x faster. Call only where :func:`can_multiply_rows` is true."""
    # By identity, the weight kept with its packed copy (so its id cannot be reused): the
    # callers pass cached column tensors that are replaced, not changed, when the weight is.
    entry = cache.get(id(weight))
    if entry is None or entry[0] is not weight:
        if len(cache) >= 64:  # replaced weights' entries: drop them all now and then
            cache.clear()
        size = (1, x.shape[1], 1, x.shape[0])
        packed = _reorder(weight[:, :, None, None], [0, 0], [1, 1], [1, 1], 1, size)
        entry = cache[id(weight)] = (weight, packed)
    packed = entry[1]
    args = ([0, 0], [1, 1], [1, 1], 1)
    rows = _rows_as_map(x)
    if add is None:
        out = torch.ops.mkldnn._convolution_pointwise(rows, packed, None, *args, "none", [None], "")
    else:
        out = torch.ops.mkldnn._convolution_pointwise.binary(
            rows, _rows_as_map(add), packed, None, *args, "add", 1.0, None, [], None
        )
    return out.permute(0, 2, 3, 1).reshape(x.shape[0], weight.shape[0])
