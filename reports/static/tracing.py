"""Tracing one eval forward of a model on ``meta`` tensors: every kernel launch of its custom
ops, the eager ops inside each DEGC layer ("glue") and the dense matmuls of each block."""

from __future__ import annotations

from collections import defaultdict

import torch

__all__ = ["trace"]

_FREE_OPS = {
    "view",
    "_unsafe_view",
    "reshape",
    "transpose",
    "t",
    "permute",
    "unsqueeze",
    "squeeze",
    "expand",
    "slice",
    "select",
    "detach",
    "alias",
    "as_strided",
    "empty",
    "empty_like",
    "new_empty",
    "empty_strided",
    "split",
    "unbind",
    "lift_fresh",
    "_reshape_alias",
}
_MATMUL_OPS = {
    "mm",
    "addmm",
    "bmm",
    "baddbmm",
    "convolution",
    "_convolution",
    "linear",
    "matmul",
    "einsum",
}


def trace(model_name: str, batch: int, dtype: torch.dtype, arch: int | None = None):
    """``(launches, glue, matmul_flops, layers, shape)`` of one eval forward on meta tensors,
    with the kernel paths the launchers take on an ``sm_<arch>`` GPU."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from clustervig import create_model
    from clustervig.degc import DEGC
    from kernels.launches import record_launches

    with torch.device("meta"):
        model = create_model(model_name).eval().to(dtype)
    cfg = model.config
    x = torch.empty(batch, cfg.in_channels, cfg.img_size, cfg.img_size, device="meta", dtype=dtype)
    degcs = [m for m in model.modules() if isinstance(m, DEGC)]
    layers = [f"layer {i}" for i in range(len(degcs))]
    glue: dict[str, list[tuple[str, int]]] = defaultdict(list)
    matmul_calls: dict[str, list[int]] = defaultdict(list)  # bytes each call reads and writes
    block = {"layer": None}  # the (Grapher, FFN) pair running, by its DEGC layer's name

    # A steady-state forward: the one before it has filled the inference caches (the local
    # update's contiguous weight columns), as any forward after the first finds them.
    with torch.no_grad():
        model(x)
    capability = None if arch is None else divmod(arch, 10)
    with (
        torch.no_grad(),
        record_launches(capability) as rec,
        FlopCounterMode(display=False) as flops,
    ):

        class Glue(TorchDispatchMode):
            """Eager ops inside a DEGC layer (``rec.label``), matmul calls inside its block."""

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                name = func.overloadpacket.__name__
                base = name.rstrip("_")  # addmm_ is an addmm
                # Each tensor once (an out= argument is also the result), plus an in-place op's
                # operand again: it is read and written (unless the op only fills it).
                tensors = {
                    id(a): a
                    for a in torch.utils._pytree.tree_leaves((args, kwargs, out))
                    if isinstance(a, torch.Tensor)
                }
                nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
                written_only = base in ("zero", "fill")
                if name.endswith("_") and not written_only and isinstance(args[0], torch.Tensor):
                    nbytes += args[0].numel() * args[0].element_size()
                if block["layer"] is not None and base in _MATMUL_OPS:
                    matmul_calls[block["layer"]].append(nbytes)
                if (
                    rec.label
                    and not str(func).startswith("clustervig.")
                    and base not in _FREE_OPS
                    and base not in _MATMUL_OPS
                ):
                    glue[rec.label].append((name, nbytes))
                return out

        for i, (module, layer) in enumerate(zip(degcs, layers, strict=True)):
            module.register_forward_pre_hook(lambda m, a, n=layer: setattr(rec, "label", n))
            module.register_forward_hook(lambda m, a, o: setattr(rec, "label", ""))
            for part in (model.backbone[2 * i], model.backbone[2 * i + 1]):
                part.register_forward_pre_hook(lambda m, a, n=layer: block.update(layer=n))
                part.register_forward_hook(lambda m, a, o: block.update(layer=None))
        with Glue():
            model(x)
    counts = flops.get_flop_counts()
    matmul = {}
    for i in range(len(degcs)):
        total = 0
        for block in (f"backbone.{2 * i}", f"backbone.{2 * i + 1}"):
            for key, per_op in counts.items():
                if key.endswith(block):
                    total += sum(
                        v for op, v in per_op.items() if not str(op).startswith("clustervig")
                    )
        matmul[f"layer {i}"] = (total, matmul_calls[f"layer {i}"])
    shape = {"B": batch, "N": cfg.grid * cfg.grid, "kappa": cfg.num_clusters, "C": cfg.channels}
    return rec.launches, glue, matmul, layers, shape
