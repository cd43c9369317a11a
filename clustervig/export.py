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

__all__ = ["check_images", "check_onnx", "export_onnx", "export_program", "onnx_ops"]

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


#: ``check_onnx`` fails above this difference, relative to the logits' scale (the largest
#: magnitude of each image's logits), or when a top-1 class differs.
CHECK_TOLERANCE = 1e-3


def check_images(sources: list[str] | None, img_size: int) -> tuple[torch.Tensor, str]:
    """Images for :func:`check_onnx`, ``(n, 3, img_size, img_size)`` with the evaluation
    transform, and a description. ``sources``: image files and folders (a folder with a
    ``val`` split uses it; any other folder every image under it); none: the digits demo's
    held-out split (scikit-learn's scans, :mod:`clustervig.demo_data`)."""
    import tempfile

    from PIL import Image

    from .data import IMAGE_EXTENSIONS, _images_in
    from .transforms import eval_transform

    files: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="clustervig-check-") as tmp:
        if not sources:
            from .demo_data import write_digits

            write_digits(tmp)
            files = _images_in(Path(tmp) / "val")
            what = "the digits demo's held-out split"
        else:
            for source in sources:
                path = Path(source)
                if path.is_dir():
                    found = _images_in(path / "val" if (path / "val").is_dir() else path)
                    if not found:
                        raise ValueError(
                            f"--check: no images ({', '.join(IMAGE_EXTENSIONS)}) under {path}"
                        )
                    files += found
                elif path.is_file():
                    files.append(path)
                else:
                    raise ValueError(f"--check: no image file or folder at {source!r}")
            what = ", ".join(sources[:3]) + (" ..." if len(sources) > 3 else "")
        transform = eval_transform(img_size)
        images = []
        for file in files:
            try:
                with Image.open(file) as image:
                    images.append(transform(image.convert("RGB")))
            except Exception as err:  # PIL raises many types for a damaged file
                raise ValueError(f"--check: cannot read image {file} ({err})") from None
    return torch.stack(images), f"{len(images)} images of {what}"


def check_onnx(model: nn.Module, path: str | Path, images: torch.Tensor, batch: int = 32) -> dict:
    """Run the ONNX file at ``path`` in ONNX Runtime and ``model`` (eval, CPU) in PyTorch on
    ``images (n, 3, H, W)``; returns the largest logit difference (absolute, and relative to
    each image's logit scale), the top-1 agreement and whether both are within
    :data:`CHECK_TOLERANCE`. A file exported for a fixed batch size gets whole batches (the
    last one padded with copies of its first image)."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fixed = session.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else batch
    model = model.eval().cpu()
    worst_abs = worst_rel = 0.0
    agree, disagree = 0, []
    for start in range(0, images.shape[0], step):
        chunk = images[start : start + step]
        count = chunk.shape[0]
        if isinstance(fixed, int) and count < fixed:  # pad to the exported batch
            chunk = torch.cat([chunk, chunk[:1].expand(fixed - count, *chunk.shape[1:])])
        with torch.no_grad():
            want = model(chunk)[:count]
        got = torch.from_numpy(np.asarray(session.run(None, {"images": chunk.numpy()})[0]))
        got = got[:count]
        diff = (got - want).abs().amax(1)
        scale = want.abs().amax(1).clamp_min(torch.finfo(want.dtype).tiny)
        worst_abs = max(worst_abs, float(diff.max()))
        worst_rel = max(worst_rel, float((diff / scale).max()))
        same = got.argmax(1) == want.argmax(1)
        agree += int(same.sum())
        disagree += [start + int(i) for i in torch.nonzero(~same).flatten()]
    total = images.shape[0]
    return {
        "images": total,
        "max_abs_diff": worst_abs,
        "max_rel_diff": worst_rel,
        "top1_agree": agree,
        "top1_disagree_indices": disagree[:20],
        "tolerance": CHECK_TOLERANCE,
        "passed": agree == total and worst_rel <= CHECK_TOLERANCE,
    }
