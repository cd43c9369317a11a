"""Ahead-of-time compilation of every kernel and config for NVIDIA targets, no GPU needed.

``triton.compile`` builds a cubin for a ``GPUTarget`` without a device; ``cuobjdump -res-usage``
(shipped with Triton) reports registers, shared memory, stack and local memory per kernel. A
stack frame or local memory means the kernel spills registers (much slower): the tests fail on it.

    python -m kernels.resources                 # default configs, sm_80 + sm_90, every dtype
    python -m kernels.resources --all-configs   # every config of every search space
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import torch

from ._common import package_version
from .registry import tunables
from .tuning import TRITON_TYPES, Tunable, width_tag

REGISTRY = tunables()

#: A100 (sm_80) and H100 / H200 (sm_90). sm_89 (RTX 40xx, L4, L40) is not in the guarantee: under
#: Triton 3.6 some k-means configs spill there (reports.static still compiles for it).
ARCHS = (80, 90)


@dataclass(frozen=True)
class Usage:
    """Resources of one compiled kernel."""

    op: str
    arch: int
    dtype: str
    config: dict
    registers: int
    shared: int  # bytes, Triton's static + dynamic shared memory
    stack: int  # bytes of stack frame (spills land here)
    local: int  # bytes of local memory

    @property
    def spills(self) -> bool:
        return self.stack > 0 or self.local > 0


def cuobjdump() -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"cuobjdump not found at {path} (it ships with Triton's CUDA backend)"
        )
    return path


def compile_kernel(tunable: Tunable, config: dict, dtype: torch.dtype, arch: int):
    """``triton.compile`` the tunable's main kernel for ``sm_<arch>`` (a CompiledKernel)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs = tunable.aot_signature(dtype, config)
    kernel = tunable.kernels[0]
    if not hasattr(kernel, "cache_key"):
        raise RuntimeError(
            "ahead-of-time compilation needs real Triton kernels: unset TRITON_INTERPRET before "
            "importing the kernels package"
        )
    # Specialise as the JIT does for the model's launches: it turns an integer argument equal
    # to 1 into a constant (the signatures declare those, e.g. a unit column stride, as
    # constexpr 1) and marks pointers and integers divisible by 16 (the model's tensors are
    # 16-byte aligned; C = 192, 320, 640 and the row strides built from it are multiples of 16).
    # That is what lets Triton vectorise loads; without it every element gets its own address.
    aligned = [
        name
        for name, kind in signature.items()
        if kind.startswith("*") or (kind == "i32" and (name == "C" or name.startswith("stride")))
    ]
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": config["num_warps"], "num_stages": config["num_stages"]}
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


_FIELD = re.compile(r"(REG|STACK|SHARED|LOCAL):(\d+)")


def disassemble(compiled) -> str:
    """The SASS of a compiled kernel (``cuobjdump -sass`` of its cubin)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(compiled.asm["cubin"])
        handle.flush()
        return subprocess.run(
            [cuobjdump(), "-sass", handle.name], capture_output=True, text=True, check=True
        ).stdout


def usage_fields(compiled) -> dict[str, int]:
    """``REG``, ``STACK``, ``SHARED``, ``LOCAL`` of a compiled kernel (``cuobjdump -res-usage``)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(compiled.asm["cubin"])
        handle.flush()
        report = subprocess.run(
            [cuobjdump(), "-res-usage", handle.name], capture_output=True, text=True, check=True
        ).stdout
    fields: dict[str, int] = {}
    for line in report.splitlines():
        if "REG:" in line:
            fields = {k: int(v) for k, v in _FIELD.findall(line)}
    return fields


def resource_usage(tunable: Tunable, config: dict, dtype: torch.dtype, arch: int) -> Usage:
    compiled = compile_kernel(tunable, config, dtype, arch)
    fields = usage_fields(compiled)
    return Usage(
        op=tunable.name,
        arch=arch,
        dtype=TRITON_TYPES[dtype],
        config=dict(config),
        registers=fields.get("REG", -1),
        shared=int(compiled.metadata.shared),
        stack=fields.get("STACK", 0),
        local=fields.get("LOCAL", 0),
    )


def survey(
    ops: Iterable[str] | None = None,
    all_configs: bool = False,
    dtypes: Iterable[torch.dtype] = tuple(TRITON_TYPES),
    archs: Iterable[int] = ARCHS,
) -> Iterator[Usage]:
    """Resource usage of the default config (or every config) of each op, per dtype and arch
    (those it is launched for: :meth:`Tunable.builds_for`)."""
    for name in ops or sorted(REGISTRY):
        tunable = REGISTRY[name]
        for dtype in dtypes:
            width = width_tag(dtype)
            if width not in tunable.widths:
                continue
            configs = tunable.space[width] if all_configs else [tunable.default[width]]
            for config in configs:
                for arch in archs:
                    if tunable.builds_for(width, arch):
                        yield resource_usage(tunable, config, dtype, arch)


_DTYPE_TAGS = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}


def _dtype_tag(text: str) -> str:
    tag = _DTYPE_TAGS.get(text.lower(), text.lower())
    if tag not in ("fp32", "fp16", "bf16"):
        raise argparse.ArgumentTypeError(
            f"expected fp32, fp16 or bf16 (or float32, float16, bfloat16), got {text!r}"
        )
    return tag


def _config_text(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kernels.resources",
        description="Compile every kernel ahead of time for sm_80/sm_90 (no GPU needed) and print "
        "registers, shared memory and spills per kernel and config.",
    )
    parser.add_argument("--ops", nargs="+", choices=sorted(REGISTRY), help="ops (default: all)")
    parser.add_argument("--all-configs", action="store_true", help="every config of every space")
    parser.add_argument(
        "--dtypes",
        nargs="+",
        type=_dtype_tag,
        default=["fp32", "fp16", "bf16"],
        help="fp32 fp16 bf16 (or float32 float16 bfloat16; default: all three)",
    )
    parser.add_argument("--version", action="version", version=package_version())
    parser.add_argument("--archs", nargs="+", type=int, choices=ARCHS, default=list(ARCHS))
    parser.add_argument("--json", metavar="PATH", help="also write every row to PATH as JSON")
    args = parser.parse_args(argv)
    # Triton 3.9 warns once that its FP-fusion default will change; the table compiles with
    # today's default (fusion on), so say so instead of printing the warning inside the table.
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    by_name = {v: k for k, v in TRITON_TYPES.items()}
    print(
        f"{'op':24s} {'sm':>3s} {'dtype':5s} {'regs':>4s} {'smem B':>7s} {'stack':>5s} "
        f"{'local':>5s}  config",
        flush=True,
    )
    spills = 0
    rows = []
    for usage in survey(args.ops, args.all_configs, [by_name[d] for d in args.dtypes], args.archs):
        spills += usage.spills
        rows.append({**asdict(usage), "spills": usage.spills})
        flag = "  SPILLS" if usage.spills else ""
        print(
            f"{usage.op:24s} {usage.arch:>3d} {usage.dtype:5s} {usage.registers:>4d} "
            f"{usage.shared:>7d} {usage.stack:>5d} {usage.local:>5d}  "
            f"{_config_text(usage.config)}{flag}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    print(f"\n{spills} kernel build(s) spill registers" if spills else "\nno spills")
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main())
