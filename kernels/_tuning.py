"""Tunable kernels: each kernel declares its search space next to it; launches read the per-GPU
cache written by ``python -m autotune --gpu`` and fall back to the kernel's default config.

A config is a flat dict of the kernel's block-size meta-parameters plus ``num_warps`` and
``num_stages``. The cache key of an entry is the op name plus a *shape bucket*, a short string the
kernel derives from the launch shape (:meth:`Tunable.bucket`), so that the tuner and the launcher
agree on which entry serves a launch.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

__all__ = [
    "Tunable",
    "LAUNCHES",
    "REGISTRY",
    "tunables",
    "WIDTHS",
    "batch_bucket",
    "per_width",
    "rows_bucket",
    "width_tag",
]

#: Every tunable kernel by op name (filled as the kernel modules are imported).
REGISTRY: dict[str, Tunable] = {}

#: The last config each op launched with and where it came from ("cache" or "default"):
#: ``{op: (bucket, config, source)}``. For tests and for ``--show``; never read by kernels.
LAUNCHES: dict[str, tuple[str, dict, str]] = {}


def tunables() -> dict[str, Tunable]:
    """Every tunable kernel by op name (imports the kernel modules, and so Triton)."""
    from . import aggregate, center, epilogue, gatv2, kmeans, knn, permute  # noqa: F401

    return dict(sorted(REGISTRY.items()))


def batch_bucket(images: int) -> int:
    """1, 8, 64 or 512: the batch sizes a tuned config is shared across."""
    for bound in (1, 8, 64):
        if images <= bound:
            return bound
    return 512


def rows_bucket(rows: int) -> int:
    """Rows rounded up to a power of four (at least 256), the bucket of row-parallel kernels."""
    bucket = 256
    while bucket < rows:
        bucket *= 4
    return bucket


WIDTHS = ("e2", "e4")  # 16-bit and 32-bit features: the two families of tuned configs


def width_tag(dtype: torch.dtype) -> str:
    """``"e2"`` for fp16/bf16 features, ``"e4"`` for float32 (and the int32 inputs of partition)."""
    return f"e{torch.empty((), dtype=dtype).element_size()}"


def configs(keys: Sequence[str], rows: Sequence[Sequence[int]]) -> list[dict]:
    """Configs from a header and rows: ``configs(("BLOCK_M", "num_warps"), [(16, 4), ...])``."""
    return [dict(zip(keys, row, strict=True)) for row in rows]


def per_width(configs: Sequence[dict] | dict) -> dict:
    """The same configs (or default) for 16- and 32-bit features."""
    return {w: configs for w in WIDTHS}


@dataclass
class Tunable:
    """A Triton kernel's tuning surface.

    Attributes:
        name: the op name, the cache's key.
        kernels: the JIT functions whose source makes up the cache's source hash.
        space: per feature width (``"e2"``, ``"e4"``), every config ``python -m autotune --gpu``
            tries. float32 operands of ``tl.dot`` run on FMA units with much larger operand
            fragments than fp16/bf16 on tensor cores, so their spill-free tiles are smaller.
        default: per feature width, the config used when the cache has no entry for a launch.
        interpret_space: the configs tried by ``--interpret`` (tiny, for CI), any width.
        bucket_fn: launch shape (keyword arguments) -> bucket string.
        signature_fn: ``(dtype, config) -> (signature, constexprs)`` of the main kernel for an
            ahead-of-time ``triton.compile`` (``kernels/resources.py``), at its most demanding
            specialisation (largest K, widest cluster padding).
        widths: the feature widths the kernel is launched for (``space`` and ``default`` have
            exactly these keys); a kernel for some GPUs or Triton versions only names them in
            ``archs`` (None: every arch the project compiles for) and ``min_triton``: its
            launcher never takes it elsewhere, so it is compiled and checked only there.
    """

    name: str
    kernels: Sequence[Callable]
    space: dict[str, Sequence[dict]]
    default: dict[str, dict]
    interpret_space: Sequence[dict]
    bucket_fn: Callable[..., str]
    signature_fn: Callable[[torch.dtype, dict], tuple[dict, dict]]
    widths: tuple[str, ...] = WIDTHS
    archs: tuple[int, ...] | None = None
    min_triton: tuple[int, int] | None = None
    _memo: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if set(self.space) != set(self.widths) or set(self.default) != set(self.widths):
            raise ValueError(f"{self.name}: space and default need the widths {self.widths}")
        for width in self.widths:
            if self.default[width] not in self.space[width]:
                raise ValueError(f"{self.name}: the {width} default is not in its space")
        for config in (*self.all_configs(), *self.interpret_space):
            if "num_warps" not in config or "num_stages" not in config:
                raise ValueError(
                    f"{self.name}: every config needs num_warps and num_stages: {config}"
                )
        REGISTRY[self.name] = self

    def builds_for(self, width: str, arch: int) -> bool:
        """Whether the kernel is launched (and so compiled and checked) for features of
        ``width`` on ``sm_<arch>`` under the installed Triton."""
        if width not in self.widths or (self.archs is not None and arch not in self.archs):
            return False
        return self.min_triton is None or triton_at_least(self.min_triton)

    def all_configs(self) -> list[dict]:
        """Every config of every width, once."""
        seen: list[dict] = []
        for width in self.widths:
            seen += [c for c in self.space[width] if c not in seen]
        return seen

    # -- hashes that invalidate cache entries -----------------------------------------------
    def source_hash(self) -> str:
        """Hash of the kernels' source: an edited kernel invalidates its tuned entries."""
        if "source_hash" in self._memo:
            return self._memo["source_hash"]
        digest = hashlib.sha256()
        for kernel in self.kernels:
            fn = getattr(kernel, "fn", kernel)
            digest.update(inspect.getsource(fn).encode())
        self._memo["source_hash"] = digest.hexdigest()[:16]
        return self._memo["source_hash"]

    def space_hash(self) -> str:
        """Hash of the search space: a changed space invalidates its tuned entries."""
        blob = json.dumps(
            {w: [sorted(c.items()) for c in self.space[w]] for w in self.widths}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def bucket(self, dtype: torch.dtype, **shape) -> str:
        return f"{width_tag(dtype)}/{self.bucket_fn(**shape)}"

    # -- lookup at launch ---------------------------------------------------------------------
    def config(self, device: torch.device, bucket: str) -> dict:
        """The config for a launch: the cached one for this GPU and bucket, else the default."""
        key = (device.type, device.index, bucket)
        hit = self._memo.get(key)
        if hit is None:
            from . import tuning_cache  # lazy: it imports this module for type names only

            entry = tuning_cache.lookup(self, device, bucket)
            default = self.default[bucket.split("/", 1)[0]]
            hit = (dict(entry), "cache") if entry is not None else (dict(default), "default")
            self._memo[key] = hit
        LAUNCHES[self.name] = (bucket, hit[0], hit[1])
        return hit[0]

    def forget(self) -> None:
        """Drop memoised lookups (after the cache file changed)."""
        self._memo.clear()


def triton_at_least(version: tuple[int, int]) -> bool:
    """Whether the installed Triton is ``version`` (major, minor) or newer."""
    import triton

    major, minor = (int(p) for p in triton.__version__.split(".")[:2])
    return (major, minor) >= version


TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def split_launch_options(config: dict) -> tuple[dict, dict]:
    """``config -> (meta, {num_warps, num_stages})`` for ``kernel[grid](**meta, **opts)``."""
    meta = {k: v for k, v in config.items() if k not in ("num_warps", "num_stages")}
    return meta, {"num_warps": config["num_warps"], "num_stages": config["num_stages"]}
