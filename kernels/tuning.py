"""Tunable kernels: each kernel declares its search space next to it; launches read the per-GPU
cache written by ``python -m autotune --gpu`` and fall back to the kernel's default config.

A :class:`Tunable` also carries what the tools outside the launcher need to know of its kernel,
so that no tool keeps a list of ops: the argument types of an ahead-of-time compile (derived from
the kernel's own argument names), the launches a DEGC layer makes, and the tuner's input recipe.
The tunables are collected by :mod:`kernels.registry`, never registered from here.

A config is a flat dict of the kernel's block-size meta-parameters plus ``num_warps`` and
``num_stages``. The cache key of an entry is the op name plus a *shape bucket*, a short string the
kernel derives from the launch shape (:meth:`Tunable.bucket`), so that the tuner and the launcher
agree on which entry serves a launch.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from . import tuning_cache

__all__ = [
    "TuneCase",
    "Tunable",
    "LAUNCHES",
    "WIDTHS",
    "batch_bucket",
    "constexpr_names",
    "grid",
    "per_width",
    "rows_bucket",
    "same_values",
    "width_tag",
]

#: The last config each op launched with and where it came from ("cache" or "default"):
#: ``{op: (bucket, config, source)}``. For tests and for ``--show``; never read by kernels.
LAUNCHES: dict[str, tuple[str, dict, str]] = {}


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
    return f"e{dtype.itemsize}"  # no tensor: launchers never touch the host


def configs(keys: Sequence[str], rows: Sequence[Sequence[int]]) -> list[dict]:
    """Configs from a header and rows: ``configs(("BLOCK_M", "num_warps"), [(16, 4), ...])``."""
    return [dict(zip(keys, row, strict=True)) for row in rows]


def grid(**axes: Sequence[int]) -> list[dict]:
    """Every combination of the axes' values, the first axis outermost:
    ``grid(BLOCK_M=(16, 32), BLOCK_C=(64,), num_warps=(4,), num_stages=(1,))``."""
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def per_width(configs: Sequence[dict] | dict) -> dict:
    """The same configs (or default) for 16- and 32-bit features."""
    return {w: configs for w in WIDTHS}


@dataclass
class Tunable:
    """A Triton kernel's tuning surface, and what the tools need to know of it.

    Attributes:
        name: the kernel's name in the tuning cache (``"kmeans_split"``, ``"max_aggregate"``).
        kernels: the JIT functions whose source makes up the cache's source hash; the first is
            the one launched (and compiled ahead of time).
        space: per feature width (``"e2"``, ``"e4"``), every config ``python -m autotune --gpu``
            tries. float32 operands of ``tl.dot`` run on FMA units with much larger operand
            fragments than fp16/bf16 on tensor cores, so their spill-free tiles are smaller.
        default: per feature width, the config used when the cache has no entry for a launch.
        interpret_space: the configs tried by ``--interpret`` (tiny, for CI), any width.
        bucket_fn: launch shape (keyword arguments) -> bucket string.
        pointer_types, scalar_types, aot_constants: the ahead-of-time compile of the main kernel
            (``kernels/resources.py``, :meth:`aot_signature`): a ``*_ptr`` argument points at the
            feature dtype unless ``pointer_types`` names its type (``"*i32"``); another runtime
            argument is ``i32`` unless ``scalar_types`` names one (``"fp32"``);
            ``aot_constants(dtype, config)`` gives the constexprs that are not in the config, at
            the most demanding specialisation the launcher makes (largest K, widest cluster
            padding), and runtime arguments the JIT specialises to a constant (a unit stride).
        widths: the feature widths the kernel is launched for (``space`` and ``default`` have
            exactly these keys); a kernel for some GPUs or Triton versions only names them in
            ``archs`` (None: every arch the project compiles for) and ``min_triton``: its
            launcher never takes it elsewhere, so it is compiled and checked only there.
        layer_launch: ``(B, N, C, kappa, K, dtype) -> (dtype, shape) | None``: the launch of
            this kernel in the forward or backward of a DEGC layer (B images of N nodes, C
            channels, kappa clusters, K neighbours, features of ``dtype``), its shape as the
            keywords of ``bucket_fn``; None when such a layer does not launch it.
        tune_call: ``(shape, dtype, device) -> TuneCase``: the tuner's recipe, running the
            kernel with one config on synthetic inputs like the model's and telling a correct
            output from a wrong one.
    """

    name: str
    kernels: Sequence[Callable]
    space: dict[str, Sequence[dict]]
    default: dict[str, dict]
    interpret_space: Sequence[dict]
    bucket_fn: Callable[..., str]
    layer_launch: Callable[..., tuple[torch.dtype, dict] | None]
    tune_call: Callable[[dict, torch.dtype, torch.device], TuneCase]
    pointer_types: dict[str, str] = field(default_factory=dict)
    scalar_types: dict[str, str] = field(default_factory=dict)
    aot_constants: Callable[[torch.dtype, dict], dict] = lambda dtype, config: {}
    widths: tuple[str, ...] = WIDTHS
    archs: tuple[int, ...] | None = None
    min_triton: tuple[int, int] | None = None
    _source_hash: str | None = field(default=None, repr=False)

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

    # -- ahead-of-time compilation -------------------------------------------------------------
    def aot_signature(self, dtype: torch.dtype, config: dict) -> tuple[dict, dict]:
        """``(signature, constexprs)`` of the main kernel for ``triton.compile``, from its own
        argument names (see the class docstring): an argument added to the kernel needs no
        change here unless it is neither a feature pointer, an i32 nor a config key."""
        kernel = self.kernels[0]
        constants = {**self.aot_constants(dtype, config)}
        constexprs_of_kernel = constexpr_names(kernel)
        signature: dict[str, str] = {}
        for name in kernel.arg_names:
            if name in constexprs_of_kernel:
                signature[name] = "constexpr"
                if name not in constants and name in config:
                    constants[name] = config[name]
            elif name in constants:  # a runtime argument the JIT makes a constant
                signature[name] = "constexpr"
            elif name.endswith("_ptr"):
                signature[name] = self.pointer_types.get(name, f"*{TRITON_TYPES[dtype]}")
            else:
                signature[name] = self.scalar_types.get(name, "i32")
        missing = [n for n, kind in signature.items() if kind == "constexpr" and n not in constants]
        if missing:
            raise ValueError(f"{self.name}: no ahead-of-time value for constexprs {missing}")
        return signature, {name: constants[name] for name in signature if name in constants}

    # -- hashes that invalidate cache entries -----------------------------------------------
    def source_hash(self) -> str:
        """Hash of the kernels' source: an edited kernel invalidates its tuned entries."""
        if self._source_hash is None:
            digest = hashlib.sha256()
            for kernel in self.kernels:
                fn = getattr(kernel, "fn", kernel)
                digest.update(inspect.getsource(fn).encode())
            self._source_hash = digest.hexdigest()[:16]
        return self._source_hash

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
        config, source = tuning_cache.config_for(self, device, bucket)
        LAUNCHES[self.name] = (bucket, config, source)
        return config


def constexpr_names(kernel) -> set[str]:
    """The constexpr parameters of a JIT (or, under the interpreter, interpreted) kernel."""
    if hasattr(kernel, "constexprs"):
        return {kernel.arg_names[i] for i in kernel.constexprs}
    params = inspect.signature(kernel.fn).parameters.values()
    return {p.name for p in params if "constexpr" in str(p.annotation)}


def same_values(output: object, expected: object) -> bool:
    """Whether two kernel outputs (tensors or tuples of them) are the same answer: integers
    equal, floats within 1e-2 (atomic float adds and float32 sums differ in the last bits by
    order)."""
    if isinstance(output, tuple):
        return all(same_values(a, b) for a, b in zip(output, expected, strict=True))
    if output.is_floating_point():
        return torch.allclose(output.float(), expected.float(), atol=1e-2, rtol=1e-2)
    return torch.equal(output, expected)


@dataclass(frozen=True)
class TuneCase:
    """The tuner's recipe for one launch shape (:attr:`Tunable.tune_call`): ``run(config)``
    launches the kernel with ``config`` on synthetic inputs like the model's; ``agrees(output,
    expected)`` says whether an output is the same answer as the default config's. Other block
    sizes sum in another order, so where the answer has near-ties (a node almost equidistant from
    two centroids, two equally near neighbours) a correct config can pick the other side: those
    kernels compare what the answer means (the k-means objective, the neighbours' distances)."""

    run: Callable[[dict], object]
    agrees: Callable[[object, object], bool] = same_values


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
