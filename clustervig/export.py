"""Export to ONNX and ``torch.export``: ``python -m clustervig export NAME --format onnx|pt2``.

ONNX has no k-means, no ragged k-NN and no custom ops of this project, so the DEGC ops are
swapped for translations built from standard operators while a model is exported
(:mod:`clustervig.onnx_translations`: k-means as a ``Loop`` that stops when the batch has
converged, the k-NN over each partition padded to the largest, not over the whole image). The
graph takes any batch size unless ``dynamic_batch=False``. :func:`check_onnx` runs an exported
file in ONNX Runtime beside the PyTorch model.

``torch.export`` keeps the custom ops (they have fake implementations), so the exported program
runs the same kernels as the eager model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .onnx_translations import onnx_ops

__all__ = ["export_onnx", "export_program", "onnx_ops"]

ONNX_OPSET = 17


def export_onnx(
    model: nn.Module,
    path: str | Path,
    img_size: int = 224,
    batch: int = 1,
    dynamic_batch: bool = True,
) -> Path:
    """Write ``model`` (eval mode, CPU) as ONNX for ``(batch, 3, img_size, img_size)`` inputs;
    with ``dynamic_batch`` the graph's input and output take any batch size (``batch`` is then
    only the example traced)."""
    model = model.eval().cpu()
    x = torch.randn(batch, 3, img_size, img_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with onnx_ops(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python ints and the legacy API
        # One forward first: the layers' inference caches (weight columns, stacked norms) are
        # then filled, and the trace sees them as constants instead of recording the slicing
        # and stacking that built them (ops ONNX Runtime would run on every call).
        model(x)
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            opset_version=ONNX_OPSET,
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}
            if dynamic_batch
            else None,
            dynamo=False,
        )
    return path


def export_program(model: nn.Module, path: str | Path, img_size: int = 224, batch: int = 1):
    """Write ``torch.export.export(model)`` (the custom ops kept) as a ``.pt2`` file."""
    model = model.eval().cpu()
    validate = getattr(model, "validate_inputs", None)
    if validate is not None:
        model.validate_inputs = False  # value checks are data-dependent: not exportable
    try:
        program = torch.export.export(model, (torch.randn(batch, 3, img_size, img_size),))
    finally:
        if validate is not None:
            model.validate_inputs = validate
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path
