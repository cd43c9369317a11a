"""The Triton launches a forward pass would make, recorded without a GPU and without running them.

Inside :func:`record_launches` the custom ops take their Triton path for ``meta`` tensors (shapes
and dtypes only, no data) and every ``kernel[grid](...)`` is recorded as a :class:`Launch`
instead of compiled and run: kernel, grid, arguments (tensors as shape / dtype / strides,
integers as values), constexprs and launch options. The launchers compute their grids and
configs from shapes alone (no host reads: ``tests/kernels/test_launches.py``), so what is
recorded is what the JIT would launch on a GPU with the same shapes (default configs, or the
tuned ones of the device the tensors claim).

:func:`compile_launch` compiles a recorded launch for an NVIDIA target the way the JIT
specialises it (pointers and multiples of 16 marked divisible by 16, an integer equal to 1 made
a constant), for register, shared-memory and SASS counts.

    with record_launches() as rec:
        model(torch.empty(8, 3, 224, 224, device="meta"))
    for launch in rec.launches: ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from . import _common
from .tuning import constexpr_names

__all__ = [
    "Launch",
    "LaunchRecorder",
    "TensorArg",
    "compile_launch",
    "record_launches",
    "specialise",
]

_TRITON_TYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "i1",
}


@dataclass(frozen=True)
class TensorArg:
    """A tensor argument of a launch: what a pointer points at."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    stride: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def triton_type(self) -> str:
        return "*" + _TRITON_TYPES[self.dtype]


@dataclass
class Launch:
    """One recorded ``kernel[grid](...)``."""

    op: str  # the custom op that launched it (kmeans, partition_knn, ...)
    kernel: str  # the @triton.jit function's name
    grid: tuple[int, int, int]
    args: dict[str, object]  # runtime arguments: TensorArg or int/float/bool
    constexprs: dict[str, object]
    num_warps: int
    num_stages: int
    label: str = ""  # the caller's label at launch time (e.g. the model layer)
    fn: object = field(default=None, repr=False, compare=False)  # the JITFunction

    @property
    def programs(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    def tensors(self) -> dict[str, TensorArg]:
        return {k: v for k, v in self.args.items() if isinstance(v, TensorArg)}


class LaunchRecorder:
    """What :func:`record_launches` yields: ``launches`` in order; set ``label`` to tag the
    launches that follow (a model hook sets it to the layer's name). ``host_ops`` lists every
    tensor op a launcher ran on a CPU tensor (``"op: aten.name"``): on a GPU each is a host
    tensor in the launch path (a pageable copy and a stream sync per call, and a launch that
    CUDA graphs cannot capture), so it should stay empty."""

    def __init__(self, capability: tuple[int, int] | None = None) -> None:
        self.launches: list[Launch] = []
        self.label = ""
        self.op = ""
        self.capability = capability  # the GPU the recorded launches are for, if one is named
        self.host_ops: list[str] = []

    def watching_host_tensors(self) -> _HostTensorWatch:
        """A context in which every tensor op that touches a CPU tensor is noted in
        :attr:`host_ops` (the ops' fakes run their launchers in it)."""
        return _HostTensorWatch(self)


class _HostTensorWatch(TorchDispatchMode):
    """Notes the tensor ops with a CPU tensor among their inputs or outputs."""

    def __init__(self, recorder: LaunchRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = pytree.tree_leaves((args, kwargs, out))
        if any(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in leaves):
            self.recorder.host_ops.append(f"{self.recorder.op}: {func}")
        return out


def _describe(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return TensorArg(tuple(value.shape), value.dtype, tuple(value.stride()))
    return value


@contextlib.contextmanager
def record_launches(capability: tuple[int, int] | None = None) -> Iterator[LaunchRecorder]:
    """Record (and skip) every Triton launch of the ops on ``meta`` tensors in the block
    (JIT kernels, and interpreted ones when ``TRITON_INTERPRET`` is set). ``capability`` names
    the GPU the launchers choose their paths for (:func:`kernels._common.target_capability`);
    None: no GPU-specific path."""
    import triton.runtime.interpreter as interpreter
    import triton.runtime.jit as jit

    recorder = LaunchRecorder(capability)
    classes = [jit.JITFunction, interpreter.InterpretedFunction]
    originals = [cls.run for cls in classes]

    def run(self, *args, grid, warmup, **kwargs):
        names = self.arg_names
        constexprs_of_kernel = constexpr_names(self)
        bound = dict(zip(names, args, strict=False))
        bound.update({k: v for k, v in kwargs.items() if k in names})
        options = {k: v for k, v in kwargs.items() if k not in names}
        runtime = {k: _describe(v) for k, v in bound.items() if k not in constexprs_of_kernel}
        constexprs = {k: v for k, v in bound.items() if k in constexprs_of_kernel}
        if callable(grid):
            grid = grid({**bound, **options})
        grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        recorder.launches.append(
            Launch(
                op=recorder.op,
                kernel=self.fn.__name__,
                grid=grid,
                args=runtime,
                constexprs=constexprs,
                num_warps=int(options.get("num_warps", 4)),
                num_stages=int(options.get("num_stages", 3)),
                label=recorder.label,
                fn=self,
            )
        )
        return None

    previous = _common.set_launch_recorder(recorder)
    for cls in classes:
        cls.run = run
    try:
        yield recorder
    finally:
        for cls, original in zip(classes, originals, strict=True):
            cls.run = original
        _common.set_launch_recorder(previous)


def specialise(launch: Launch) -> tuple[dict, dict, dict]:
    """``(signature, constexprs, attrs)`` of a recorded launch as the JIT specialises it:
    pointers marked 16-byte aligned (PyTorch's allocations are), integers divisible by 16 marked
    so, an integer equal to 1 made a constant."""
    fn = launch.fn
    signature: dict[str, str] = {}
    constexprs: dict[str, object] = dict(launch.constexprs)
    attrs = {}
    for index, name in enumerate(fn.arg_names):
        if name in launch.constexprs:
            signature[name] = "constexpr"
            continue
        value = launch.args[name]
        if isinstance(value, TensorArg):
            signature[name] = value.triton_type
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            if value == 1:  # the JIT makes an int argument equal to 1 a constant
                signature[name] = "constexpr"
                constexprs[name] = 1
            else:
                signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
                if value % 16 == 0:
                    attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{launch.kernel}: cannot compile an argument {name}={value!r}")
    return signature, constexprs, attrs


def compile_launch(launch: Launch, arch: int):
    """``triton.compile`` of a recorded launch for ``sm_<arch>``, specialised as the JIT
    specialises the real launch (a CompiledKernel: ``.asm["cubin"]``, ``.metadata``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, attrs = specialise(launch)
    source = ASTSource(fn=launch.fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": launch.num_warps, "num_stages": launch.num_stages}
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
