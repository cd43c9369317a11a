"""The kernel launches the models make, derived from the models themselves (not a hand list).

A model is built on the ``meta`` device (no memory, no compute) and every DEGC layer is read for
its channels, neighbours and clusters; with the model's node grid and a batch size that gives
each op's launch shape, and the kernel's own ``bucket`` function turns it into the cache key.
Launches that share a bucket are tuned once, on the largest of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from clustervig import CViG, canonical_name, create_model
from kernels.tuning import Tunable, width_tag

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
DEFAULT_DTYPES = (torch.bfloat16, torch.float32)


@dataclass
class Launch:
    """One op's launch shape, the bucket it falls in, and where it came from."""

    op: str
    dtype: torch.dtype
    shape: dict
    bucket: str
    sources: list[str] = field(default_factory=list)

    def size(self) -> int:
        return int(torch.tensor(list(self.shape.values())).prod())


def layer_launches(
    tunables: dict[str, Tunable], B: int, N: int, C: int, kappa: int, K: int, dtype: torch.dtype
) -> list[tuple[str, torch.dtype, dict]]:
    """(op, dtype, shape) of every kernel launch of one DEGC layer's forward and backward (the
    kernels that take this dtype and shape; every k-means path), as each kernel's
    :attr:`kernels.tuning.Tunable.layer_launch` describes it."""
    out = []
    for name, tunable in tunables.items():
        launch = tunable.layer_launch(B, N, C, kappa, K, dtype)
        if launch is not None and width_tag(launch[0]) in tunable.widths:
            out.append((name, *launch))
    return out


def model_launches(
    tunables: dict[str, Tunable],
    models: Iterable[str],
    batch_sizes: Iterable[int] = DEFAULT_BATCH_SIZES,
    dtypes: Iterable[torch.dtype] = DEFAULT_DTYPES,
) -> tuple[list[Launch], list[str]]:
    """Unique launches (one per op and bucket, the largest shape kept) of the given models.

    Returns the launches and notes for models that launch no Triton kernel (the baselines).
    """
    by_key: dict[tuple[str, str], Launch] = {}
    notes: list[str] = []
    for name in models:
        key = canonical_name(name)
        with torch.device("meta"):
            model = create_model(key)
        if not isinstance(model, CViG):
            notes.append(f"{key}: dense k-NN in torch, no Triton kernels to tune")
            continue
        N = model.config.grid**2
        layers = {(d.channels, d.num_clusters, d.k) for d in model.degc_layers()}
        for batch in batch_sizes:
            for dtype in dtypes:
                for C, kappa, K in sorted(layers):
                    for op, dt, shape in layer_launches(tunables, batch, N, C, kappa, K, dtype):
                        bucket = tunables[op].bucket(dt, **shape)
                        launch = by_key.get((op, bucket))
                        source = f"{key} b={batch} {str(dtype).replace('torch.', '')}"
                        if launch is None:
                            launch = by_key[(op, bucket)] = Launch(op, dt, dict(shape), bucket)
                        elif tuple(shape.values()) > tuple(launch.shape.values()):
                            launch.shape = dict(shape)
                        if source not in launch.sources:
                            launch.sources.append(source)
    return sorted(by_key.values(), key=lambda launch: (launch.op, launch.bucket)), notes
