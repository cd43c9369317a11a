"""``python -m reports.static``: a static performance report of one forward pass on a GPU we do
not have. Every number it prints is an ESTIMATE (shapes, compiled code and a roofline), not a
measurement.

    python -m reports.static --model cvig_ti --batch-size 256 --gpu h100 --dtype bf16 --json F

What it does, without a GPU:

1. Traces one eval forward of the model (the second: a steady state) on the ``meta`` device inside
   :func:`kernels.launches.record_launches`: every Triton launch the custom ops would make
   (kernel, grid, config, arguments), tagged with its DEGC layer. The eager PyTorch ops around
   them inside each DEGC layer ("glue") and the dense matmuls / convolutions of each block are
   traced in the same pass (a dispatch mode and ``FlopCounterMode``).
2. Compiles every distinct launch for the GPU's architecture as the JIT specialises it and reads
   registers, shared memory, spills and the SASS (instructions, ``BAR`` barriers, the innermost
   loops: the hot loop).
3. Estimates each launch's time as the largest of: memory (bytes / bandwidth, scaled down when
   too few SMs are busy to draw it), tensor cores (FLOPs / peak), issue (warp instructions /
   (busy SMs x 4 schedulers x clock)), and a launch floor. Bytes, FLOPs and loop trip counts
   come from a work model per kernel (``WORK_MODELS``) under two stated assumptions: Lloyd
   iterations per image (``--kmeans-iters``) and equal partitions (N / kappa nodes each).

It lives in ``reports`` (not ``kernels.resources``) because it builds models: ``kernels`` never
imports ``clustervig``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clustervig import __version__

# ---------------------------------------------------------------------------------------------
# GPUs (public spec-sheet peaks, dense; what the estimates divide by)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPU:
    name: str
    arch: int  # sm_<arch> the kernels are compiled for
    sms: int
    clock_ghz: float  # boost clock
    bandwidth_tbs: float  # DRAM
    tc_bf16_tflops: float  # dense tensor-core bf16/fp16 with fp32 accumulation
    tc_tf32_tflops: float
    fp32_tflops: float  # CUDA cores (FMA)
    max_warps_per_sm: int
    l2_mib: int  # L2 cache
    l2_bandwidth_tbs: float  # L2 hits, approximate (public microbenchmarks), conservative
    regs_per_sm: int = 65536
    smem_per_sm_kib: int = 228
    max_programs_per_sm: int = 32


GPUS = {
    "h100": GPU(
        "H100 SXM", 90, 132, 1.98, 3.35, 989.0, 494.0, 67.0, 64, 50, 5.5, smem_per_sm_kib=228
    ),
    "a100": GPU(
        "A100 SXM 80GB", 80, 108, 1.41, 2.04, 312.0, 156.0, 19.5, 64, 40, 4.0, smem_per_sm_kib=164
    ),
    "rtx4090": GPU(
        "RTX 4090", 89, 128, 2.52, 1.01, 165.2, 82.6, 82.6, 48, 72, 3.0, smem_per_sm_kib=100
    ),
}
#: Re-reads count as L2 hits when the data a launch reads fits in this share of the L2.
L2_RESIDENT_SHARE = 0.5
#: A launch costs at least this on the device (eager launch latency); printed as an assumption.
LAUNCH_FLOOR_US = 2.5
#: The fraction of DRAM bandwidth one busy SM can draw (so few programs cannot saturate HBM).
SM_BANDWIDTH_SHARE = 2.0


# ---------------------------------------------------------------------------------------------
# SASS
# ---------------------------------------------------------------------------------------------
_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


@dataclass
class Sass:
    instructions: int
    barriers: int
    loops: list[tuple[int, int, int]]  # innermost loops: (instructions, barriers, shuffles)
    loop_opcodes: list[dict[str, int]] = field(default_factory=list)  # per loop, same order

    @property
    def hot_loop(self) -> tuple[int, int, int]:
        """The innermost loop with the most instructions (0s when there is none)."""
        return max(self.loops, default=(0, 0, 0))


def parse_sass(text: str) -> Sass:
    """Instruction count, ``BAR`` count and innermost loops (ranges closed by a backward
    branch that contain no other backward branch) of a ``cuobjdump -sass`` listing."""
    ops: list[tuple[int, str, str]] = []
    for match in _INSTR.finditer(text):
        address, _, opcode, operands = match.groups()
        ops.append((int(address, 16), opcode, operands))
    address_index = {addr: i for i, (addr, _, _) in enumerate(ops)}
    back: list[tuple[int, int]] = []
    for i, (_, opcode, operands) in enumerate(ops):
        if opcode.startswith("BRA"):
            target = re.search(r"0x([0-9a-f]+)", operands)
            if target:
                j = address_index.get(int(target.group(1), 16))
                if j is not None and j <= i:
                    back.append((j, i))
    innermost = [
        (lo, hi)
        for lo, hi in back
        if not any(lo <= a and b <= hi and (a, b) != (lo, hi) for a, b in back)
    ]
    loops, opcodes = [], []
    for lo, hi in innermost:
        body = [op for _, op, _ in ops[lo : hi + 1]]
        loops.append(
            (
                len(body),
                sum(op.startswith("BAR") for op in body),
                sum(op.startswith("SHFL") for op in body),
            )
        )
        opcodes.append(dict(Counter(body)))
    real = [op for _, op, _ in ops if op not in ("NOP",)]
    return Sass(len(real), sum(op.startswith("BAR") for op in real), loops, opcodes)


def _has(opcodes: dict[str, int], *prefixes: str) -> bool:
    return any(op.startswith(prefixes) for op in opcodes)


#: Innermost loops a work model counts separately, recognised by what they execute: per kernel,
#: role -> predicate over the loop's opcodes (the largest matching loop stands for the role).
LOOP_ROLES = {
    "_kmeans_step": {
        # the sums of the previous step's blocks, one channel slice at a time
        "reduce": lambda o: _has(o, "FADD") and _has(o, "LDG") and not _has(o, "HMMA", "HGMMA"),
        # a channel slice's product (the accumulate loop; the label loop's body, which holds
        # the reduce loop and so is no innermost loop, is of the same size and counted as it)
        "slice": lambda o: _has(o, "HMMA", "HGMMA") and _has(o, "STG"),
    },
    "_partition_knn_kernel": {
        # a selection pass over one tile: 32-bit minima, no memory access
        "selection": lambda o: _has(o, "VIMNMX", "IMNMX") and not _has(o, "LDG", "STG"),
        # a merge pass of tile and running top-K: 64-bit key compares (the ``.EX`` half)
        "merge": lambda o: any(".EX" in op for op in o) and not _has(o, "LDG", "STG", "IABS"),
        # channel slices: squared norms (FMA) and products (tensor cores or FMA)
        "norms": lambda o: _has(o, "LDG") and not _has(o, "HMMA", "HGMMA", "LDGSTS"),
        "dot": lambda o: _has(o, "HMMA", "HGMMA", "LDGSTS"),
    },
}


def loop_roles(kernel: str, sass: Sass) -> dict[str, tuple[int, int, int]]:
    """``role -> (instructions, barriers, shuffles)`` of the kernel's recognised loops."""
    found: dict[str, tuple[int, int, int]] = {}
    for role, matches in LOOP_ROLES.get(kernel, {}).items():
        hits = [
            loop for loop, ops in zip(sass.loops, sass.loop_opcodes, strict=True) if matches(ops)
        ]
        if hits:
            found[role] = max(hits)
    return found


# ---------------------------------------------------------------------------------------------
# work models: bytes, FLOPs, trips of the hot loop per program, programs that do work
# ---------------------------------------------------------------------------------------------
@dataclass
class Work:
    bytes: float
    flops: float  # of which tensor-core FLOPs
    tc_flops: float
    hot_trips: float  # hot-loop iterations per active program
    active_programs: int
    # trips per active program of the loops named in LOOP_ROLES (replaces the hot-loop count)
    loop_trips: dict[str, float] = field(default_factory=dict)
    # bytes that read again what the launch already read (``bytes`` excludes them), and the
    # distinct bytes read: re-reads are L2 hits when those fit in the L2, else DRAM traffic
    reread_bytes: float = 0.0
    distinct_bytes: float = 0.0


def _partition_sizes(n: int, kappa: int) -> list[int]:
    """Equal partitions (the stated assumption): N / kappa nodes, the remainder spread."""
    return [n // kappa + (1 if i < n % kappa else 0) for i in range(kappa)]


def _kmeans_kernel(launch, shape, iters) -> Work:
    x = launch.args["x_ptr"]
    B, N, C = x.shape
    bn, bc = launch.constexprs["BLOCK_N"], launch.constexprs["BLOCK_C"]
    kpad = launch.constexprs["KAPPA_PAD"]
    passes = iters + 1  # the first assignment, then one pass per iteration (assign + accumulate)
    # Each pass reads x once (its accumulate step re-reads the slices the label step just read:
    # L1 hits) and the labels twice; the sums (kpad x C floats) stay in L1/L2. Passes after the
    # first read x again: L2 hits if x fits there (CViG-Ti: 19 MB at batch 256).
    x_bytes = B * N * C * x.dtype.itemsize
    return Work(
        bytes=x_bytes + passes * 2 * B * N * 4,
        flops=passes * B * 4 * N * kpad * C,
        tc_flops=passes * B * 4 * N * kpad * C,
        hot_trips=passes * math.ceil(N / bn) * 2 * math.ceil(C / bc),
        active_programs=B,
        reread_bytes=(passes - 1) * x_bytes,
        distinct_bytes=x_bytes,
    )


def _kmeans_resident_kernel(launch, shape, iters) -> Work:
    x = launch.args["x_ptr"]
    B, N, C = x.shape
    kpad = launch.constexprs["KAPPA_PAD"]
    # x is read once (its tiles stay in shared memory); labels, centroids and the iteration
    # count are written once. The first pass runs before the loop, the loop once per iteration.
    return Work(
        bytes=B * N * C * x.dtype.itemsize + B * N * 4 + B * kpad * C * 4 + B * 4,
        flops=(iters + 1) * B * 4 * N * kpad * C,
        tc_flops=(iters + 1) * B * 4 * N * kpad * C,
        hot_trips=iters,
        active_programs=B,
    )


def _kmeans_step(launch, shape, iters) -> Work:
    x = launch.args["x_ptr"]
    B, N, C = x.shape
    bc = launch.constexprs["BLOCK_C"]
    kpad, kappa = launch.constexprs["KAPPA_PAD"], launch.constexprs["KAPPA"]
    blocks = launch.grid[1]
    sums = B * blocks * kappa * C * 4  # one step's partial sums
    first = launch.constexprs["FIRST"]  # the first step reads the seeds, no sums
    # Every launch of the loop is counted once per forward by the caller; programs of an image
    # that has converged exit at once: a launch does work with probability iters / max_iters.
    # Each program reads x's rows of its block, and every block's sums of the last step (its
    # image's: L2 re-reads after the first), and writes its own sums, counts and labels.
    chunks = math.ceil(C / bc)
    return Work(
        bytes=B * N * C * x.dtype.itemsize + 2 * B * N * 4 + (1 if first else 2) * sums,
        flops=B * 4 * N * kpad * C,
        tc_flops=B * 4 * N * kpad * C,
        hot_trips=0,  # the named loops below
        active_programs=B * blocks,
        loop_trips={"reduce": 0 if first else chunks * blocks, "slice": 2 * chunks},
        reread_bytes=0 if first else (blocks - 1) * sums,
        distinct_bytes=sums,
    )


def _kmeans_finish(launch, shape, iters) -> Work:
    sums = launch.args["partial_sums_ptr"]
    _, B, blocks, kappa, C = sums.shape
    # Each (image, channel slice) program reads its slice of every block's last sums.
    return Work(
        bytes=sums.nbytes / 2 + launch.args["out_ptr"].nbytes,
        flops=0,
        tc_flops=0,
        hot_trips=blocks,
        active_programs=launch.programs,
    )


def _partition_kernel(launch, shape, iters) -> Work:
    labels = launch.args["labels_ptr"]
    B, N = labels.shape
    bn = launch.constexprs["BLOCK_N"]
    return Work(
        bytes=B * N * 4 * 5,
        flops=0,
        tc_flops=0,
        hot_trips=2 * math.ceil(N / bn),
        active_programs=B,
    )


def _permute_rows_kernel(launch, shape, iters) -> Work:
    x = launch.args["x_ptr"]
    M, C = x.shape
    return Work(
        bytes=2 * M * C * x.dtype.itemsize + M * 4,
        flops=0,
        tc_flops=0,
        hot_trips=1,
        active_programs=launch.programs,
    )


def _partition_knn_kernel(launch, shape, iters) -> Work:
    x = launch.args["x_ptr"]
    M, C = x.shape
    c = launch.constexprs
    bm, bn, bc, k = c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_C"], c["K"]
    B, N, kappa = shape["B"], shape["N"], shape["kappa"]
    sizes = _partition_sizes(N, kappa) * B
    blocks = sum(math.ceil(s / bm) for s in sizes)
    tile_pairs = sum(math.ceil(s / bm) * math.ceil(s / bn) for s in sizes)
    chunks = math.ceil(C / bc)
    # Per block: the rows' norms; then per column tile the candidates' norms and the products;
    # then K selection passes over the one tile, or K merge passes per tile (larger partitions).
    trips = {"norms": 0.0, "dot": 0.0, "selection": 0.0, "merge": 0.0}
    for s in sizes:
        n_blocks, tiles = math.ceil(s / bm), math.ceil(s / bn)
        trips["norms"] += n_blocks * chunks * (1 + tiles)
        trips["dot"] += n_blocks * tiles * chunks
        if tiles == 1:
            trips["selection"] += n_blocks * min(k, s)
        else:
            trips["merge"] += n_blocks * tiles * k
    programs = launch.programs
    return Work(
        bytes=sum(math.ceil(s / bm) * (bm + s) for s in sizes) * C * x.dtype.itemsize + M * k * 4,
        flops=tile_pairs * 2 * bm * bn * C,
        tc_flops=tile_pairs * 2 * bm * bn * C,
        hot_trips=0,
        active_programs=min(programs, blocks),
        loop_trips={role: t / max(1, min(programs, blocks)) for role, t in trips.items()},
    )


def _max_aggregate_kernel(launch, shape, iters) -> Work:
    x = launch.args["x_ptr"]
    M, C = x.shape
    k = launch.constexprs["K"]
    # The K gathered rows lie in the same image's partition, read by neighbouring programs:
    # L2 hits, not DRAM traffic (x of a layer is at most ~20 MB at the models' batch 256).
    return Work(
        bytes=2 * M * C * x.dtype.itemsize + M * k * 4,
        flops=2 * M * k * C,
        tc_flops=0,
        hot_trips=k,
        active_programs=launch.programs,
    )


def _segment_norm_gelu_kernel(launch, shape, iters) -> Work:
    acc = launch.args["acc_ptr"]
    table = launch.args["table_ptr"]
    M, C = acc.shape
    # One read of acc, one write of the result; the partition rows and the vectors are L2 hits.
    return Work(
        bytes=2 * M * C * acc.dtype.itemsize + M * 4 + table.nbytes,
        flops=8 * M * C,
        tc_flops=0,
        hot_trips=1,
        active_programs=launch.programs,
    )


def _center_tokens_kernel(launch, shape, iters) -> Work:
    out = launch.args["out_ptr"]
    # The image's channels read twice (the second time from L2), written once.
    return Work(
        bytes=2 * out.nbytes,
        flops=2 * out.numel,
        tc_flops=0,
        hot_trips=2 * math.ceil(out.shape[1] / launch.constexprs["BLOCK_N"]),
        active_programs=launch.programs,
        reread_bytes=out.nbytes,
        distinct_bytes=out.nbytes,
    )


def _gatv2_attention_kernel(launch, shape, iters) -> Work:
    source = launch.args["source_ptr"]
    B, kappa, C = source.shape
    pad = launch.constexprs["KAPPA_PAD"]
    # Each image's two projections read, its output written; the (kappa, kappa, C) pairs are
    # formed in registers slice by slice.
    return Work(
        bytes=3 * source.nbytes,
        flops=B * (4 * pad * pad * C + 2 * pad * pad * C),
        tc_flops=0,
        hot_trips=2 * math.ceil(C / launch.constexprs["BLOCK_C"]),
        active_programs=B,
    )


WORK_MODELS = {
    "_kmeans_kernel": _kmeans_kernel,
    "_kmeans_resident_kernel": _kmeans_resident_kernel,
    "_kmeans_step": _kmeans_step,
    "_kmeans_finish": _kmeans_finish,
    "_partition_kernel": _partition_kernel,
    "_permute_rows_kernel": _permute_rows_kernel,
    "_partition_knn_kernel": _partition_knn_kernel,
    "_max_aggregate_kernel": _max_aggregate_kernel,
    "_segment_norm_gelu_kernel": _segment_norm_gelu_kernel,
    "_center_tokens_kernel": _center_tokens_kernel,
    "_gatv2_attention_kernel": _gatv2_attention_kernel,
}


# ---------------------------------------------------------------------------------------------
# compile + estimate
# ---------------------------------------------------------------------------------------------
_COMPILED: dict[tuple, dict] = {}


def compiled_facts(launch, arch: int) -> dict:
    """Registers, shared memory, spills and SASS counts of a launch's specialisation."""
    from kernels.launches import compile_launch, specialise
    from kernels.resources import disassemble, usage_fields

    key = (launch.kernel, arch, launch.num_warps, launch.num_stages, repr(specialise(launch)))
    if key in _COMPILED:
        return _COMPILED[key]
    compiled = compile_launch(launch, arch)
    fields = usage_fields(compiled)
    sass = disassemble(compiled)
    parsed = parse_sass(sass)
    loop_instr, loop_bars, loop_shfl = parsed.hot_loop
    roles = loop_roles(launch.kernel, parsed)
    facts = {
        "registers": int(fields.get("REG", 0)),
        "shared_bytes": int(compiled.metadata.shared),
        "spills": int(fields.get("STACK", 0)) + int(fields.get("LOCAL", 0)) > 0,
        "sass_instructions": parsed.instructions,
        "sass_barriers": parsed.barriers,
        "hot_loop_instructions": loop_instr,
        "hot_loop_barriers": loop_bars,
        "hot_loop_shuffles": loop_shfl,
        "loops": {
            role: dict(zip(("instructions", "barriers", "shuffles"), v, strict=True))
            for role, v in roles.items()
        },
    }
    _COMPILED[key] = facts
    return facts


def programs_per_sm(gpu: GPU, warps: int, registers: int, shared: int) -> int:
    by_regs = gpu.regs_per_sm // max(1, registers * 32 * warps)
    by_smem = (gpu.smem_per_sm_kib * 1024) // shared if shared else gpu.max_programs_per_sm
    by_warps = gpu.max_warps_per_sm // warps
    return max(1, min(by_regs, by_smem, by_warps, gpu.max_programs_per_sm))


def estimate_us(gpu: GPU, work: Work, facts: dict, warps: int, dtype: torch.dtype) -> dict:
    """The three bounds and the estimate (their max, at least the launch floor), in us."""
    active = max(1, work.active_programs)
    per_sm = programs_per_sm(gpu, warps, facts["registers"], facts["shared_bytes"])
    busy_sms = min(gpu.sms, active)
    share = min(1.0, SM_BANDWIDTH_SHARE * busy_sms / gpu.sms)
    bandwidth = gpu.bandwidth_tbs * 1e12 * share
    memory = work.bytes / bandwidth * 1e6
    if work.reread_bytes:
        if work.distinct_bytes <= L2_RESIDENT_SHARE * gpu.l2_mib * 2**20:
            memory += work.reread_bytes / (gpu.l2_bandwidth_tbs * 1e12 * share) * 1e6
        else:
            memory += work.reread_bytes / bandwidth * 1e6
    peak = gpu.tc_bf16_tflops if dtype in (torch.bfloat16, torch.float16) else gpu.fp32_tflops
    tensor = work.tc_flops / (peak * 1e12) * 1e6
    # Warp instructions: the hot loop times its trips plus the rest once, for every warp; or,
    # where the work model names its loops, each named loop times its trips.
    if work.loop_trips:
        loops = facts.get("loops", {})
        missing = [r for r, t in work.loop_trips.items() if t and r not in loops]
        if missing:
            raise SystemExit(f"reports.static: loops {missing} not found in the compiled kernel")
        per_warp = facts["sass_instructions"] + sum(
            loops[r]["instructions"] * max(0.0, t - 1) for r, t in work.loop_trips.items() if t
        )
    else:
        per_warp = facts["sass_instructions"] + facts["hot_loop_instructions"] * max(
            0.0, work.hot_trips - 1
        )
    warps_per_sm = min(gpu.max_warps_per_sm, warps * min(per_sm, math.ceil(active / busy_sms)))
    issue_rate = busy_sms * min(4, warps_per_sm) * gpu.clock_ghz * 1e9  # warp instr / s
    issue = active * warps * per_warp / issue_rate * 1e6
    return {
        "memory_us": memory,
        "tensor_us": tensor,
        "issue_us": issue,
        "est_us": max(memory, tensor, issue, LAUNCH_FLOOR_US),
        "occupancy": min(1.0, per_sm * warps / gpu.max_warps_per_sm),
        "programs_per_sm": per_sm,
    }


# ---------------------------------------------------------------------------------------------
# tracing the model
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------
def _eager_us(gpu: GPU, call_bytes: list[int]) -> float:
    """Eager PyTorch calls, each its bytes at DRAM bandwidth or the launch floor."""
    return sum(max(LAUNCH_FLOOR_US, b / (gpu.bandwidth_tbs * 1e12) * 1e6) for b in call_bytes)


def report(
    model_name: str, batch: int, gpu_key: str, dtype: torch.dtype, iters: int, max_iters: int = 20
) -> dict:
    gpu = GPUS[gpu_key]
    launches, glue, matmul, layers, shape = trace(model_name, batch, dtype, gpu.arch)
    rows = []
    for launch in launches:
        model_fn = WORK_MODELS.get(launch.kernel)
        if model_fn is None:
            raise SystemExit(f"reports.static: no work model for kernel {launch.kernel}")
        work = model_fn(launch, shape, iters)
        facts = compiled_facts(launch, gpu.arch)
        est = estimate_us(gpu, work, facts, launch.num_warps, dtype)
        if launch.kernel == "_kmeans_step" and not launch.constexprs["FIRST"]:
            # max_iters steps are launched; past convergence their programs exit at once: a
            # step's work above the launch floor is done with probability iters / max_iters
            busy = est["est_us"] - LAUNCH_FLOOR_US
            est["est_us"] = LAUNCH_FLOOR_US + max(0.0, busy) * iters / max_iters
        config = {k: v for k, v in launch.constexprs.items() if k.startswith("BLOCK")}
        config.update(num_warps=launch.num_warps, num_stages=launch.num_stages)
        rows.append(
            {
                "layer": launch.label,
                "kernel": launch.kernel,
                "op": launch.op,
                "config": config,
                "grid": list(launch.grid),
                "programs": launch.programs,
                "active_programs": min(work.active_programs, launch.programs),
                "bytes": work.bytes,
                "flops": work.flops,
                **facts,
                **est,
            }
        )
    for layer in layers:
        ops = glue.get(layer, [])
        us = _eager_us(gpu, [b for _, b in ops])
        if ops:  # eager ops left inside the layer (none when every step is a kernel)
            rows.append(
                {
                    "layer": layer,
                    "kernel": "glue",
                    "op": f"{len(ops)} eager torch ops",
                    "programs": len(ops),
                    "active_programs": len(ops),
                    "bytes": sum(b for _, b in ops),
                    "flops": 0,
                    "est_us": us,
                    "ops": sorted({n for n, _ in ops}),
                }
            )
        peak = gpu.tc_bf16_tflops if dtype != torch.float32 else gpu.tc_tf32_tflops
        flops, calls = matmul[layer]
        # A roofline per call: its operands and result at DRAM bandwidth (the block's products
        # over ~50K rows are memory-bound) or the launch floor; the block's FLOPs at peak.
        memory_us = _eager_us(gpu, calls)
        rows.append(
            {
                "layer": layer,
                "kernel": "matmul",
                "op": f"{len(calls)} dense matmuls / convs of the block (Grapher + FFN)",
                "programs": len(calls),
                "active_programs": len(calls),
                "bytes": sum(calls),
                "flops": flops,
                "est_us": max(flops / (peak * 1e12) * 1e6, memory_us),
                # the compute-only bound (before the memory term), kept for comparison
                "est_compute_only_us": max(
                    flops / (peak * 1e12) * 1e6, len(calls) * LAUNCH_FLOOR_US
                ),
            }
        )
    meta = {
        "model": model_name,
        "batch_size": batch,
        "gpu": gpu.name,
        "arch": f"sm_{gpu.arch}",
        "dtype": str(dtype).replace("torch.", ""),
        "kmeans_iters_assumed": iters,
        "estimate": True,
        "assumptions": [
            f"ESTIMATES from shapes, compiled SASS and {gpu.name} peak rates; not measured",
            f"every image runs {iters} Lloyd iterations (observed 4-20 in the models)",
            "partitions of equal size (N / kappa nodes)",
            f"launch floor {LAUNCH_FLOOR_US} us; one busy SM draws at most "
            f"{SM_BANDWIDTH_SHARE:g}/{gpu.sms} of DRAM (and L2) bandwidth",
            f"a launch's re-reads of data it already read are L2 hits at "
            f"{gpu.l2_bandwidth_tbs:g} TB/s (approximate) when that data fits in "
            f"{L2_RESIDENT_SHARE:g} of the {gpu.l2_mib} MiB L2, DRAM traffic otherwise",
            "issue bound: 4 warp instructions per SM per cycle at boost clock",
            "matmuls: the block's FLOPs at dense tensor-core peak, or per call its operands and "
            "result at DRAM bandwidth (at least the launch floor), whichever is larger; glue "
            "ops at DRAM bandwidth or the launch floor",
        ],
        "clustervig": __version__,
        "triton": _triton_version(),
    }
    return {"meta": meta, "launches": rows, "summary": summarise(rows, layers)}


def _triton_version() -> str:
    import triton

    return triton.__version__


_GROUPS = {
    "_kmeans_kernel": "k-means",
    "_kmeans_resident_kernel": "k-means",
    "_kmeans_step": "k-means",
    "_kmeans_finish": "k-means",
    "_partition_kernel": "partition",
    "_permute_rows_kernel": "permutes",
    "_partition_knn_kernel": "k-NN",
    "_max_aggregate_kernel": "aggregate",
    "_segment_norm_gelu_kernel": "epilogue",
    "_center_tokens_kernel": "centre",
    "_gatv2_attention_kernel": "attention",
    "glue": "glue",
    "matmul": "matmul",
}
COLUMNS = (
    "centre",
    "k-means",
    "partition",
    "k-NN",
    "permutes",
    "attention",
    "aggregate",
    "epilogue",
    "glue",
    "matmul",
)


def summarise(rows: list[dict], layers: list[str]) -> dict:
    per_layer = {layer: dict.fromkeys(COLUMNS, 0.0) for layer in layers}
    for row in rows:
        per_layer[row["layer"]][_GROUPS[row["kernel"]]] += row["est_us"]
    totals = {c: sum(v[c] for v in per_layer.values()) for c in COLUMNS}
    non_matmul = sum(v for c, v in totals.items() if c != "matmul")
    knn = [r for r in rows if r["kernel"] == "_partition_knn_kernel"]
    compute_only = sum(r["est_compute_only_us"] for r in rows if r["kernel"] == "matmul")
    return {
        "per_layer_us": per_layer,
        "forward_us": totals,
        "degc_minus_matmul_over_matmul": non_matmul / max(totals["matmul"], 1e-9),
        # the same over the matmuls' compute-only bound (the report's earlier matmul model)
        "degc_minus_matmul_over_matmul_compute_only": non_matmul / max(compute_only, 1e-9),
        "knn_idle_programs": (
            1 - sum(r["active_programs"] for r in knn) / max(1, sum(r["programs"] for r in knn))
        ),
    }


def _print(result: dict) -> None:
    meta, rows, summary = result["meta"], result["launches"], result["summary"]
    print(
        f"ESTIMATE (not measured): {meta['model']} batch {meta['batch_size']} on {meta['gpu']} "
        f"({meta['arch']}, {meta['dtype']}), Triton {meta['triton']}"
    )
    for line in meta["assumptions"]:
        print(f"  assumption: {line}")
    header = (
        f"{'layer':9s} {'kernel':22s} {'programs':>8s} {'active':>7s} {'regs':>4s} "
        f"{'smem':>6s} {'occ':>4s} {'MB':>8s} {'GFLOP':>7s} {'instr':>5s} {'loop':>4s} "
        f"{'bar':>3s} {'est us':>8s}  config"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['layer']:9s} {r['kernel']:22s} {r['programs']:8d} {r['active_programs']:7d} "
            f"{r.get('registers', 0):4d} {r.get('shared_bytes', 0):6d} "
            f"{r.get('occupancy', 0):4.2f} {r['bytes'] / 1e6:8.2f} {r['flops'] / 1e9:7.2f} "
            f"{r.get('sass_instructions', 0):5d} {r.get('hot_loop_instructions', 0):4d} "
            f"{r.get('hot_loop_barriers', 0):3d} {r['est_us']:8.1f}  "
            + " ".join(f"{k}={v}" for k, v in r.get("config", {}).items())
            + ("  SPILLS" if r.get("spills") else "")
        )
    print(
        "\nper forward, estimated us: "
        + ", ".join(f"{c} {v:.0f}" for c, v in summary["forward_us"].items())
    )
    print(
        f"DEGC work besides the dense matmuls / the matmuls: "
        f"{summary['degc_minus_matmul_over_matmul']:.2f}x (estimate; "
        f"{summary['degc_minus_matmul_over_matmul_compute_only']:.2f}x over the matmuls' "
        "compute-only bound); k-NN idle programs "
        f"{100 * summary['knn_idle_programs']:.0f}%"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reports.static",
        description="A static performance report (ESTIMATES, no GPU needed): every kernel "
        "launch of one forward, compiled for the GPU, with bytes, FLOPs, SASS counts and an "
        "estimated time beside the dense matmuls.",
    )
    parser.add_argument("--model", default="cvig_ti", help="a ClusterViG model (default cvig_ti)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument(
        "--kmeans-iters",
        type=int,
        default=12,
        help="Lloyd iterations per image assumed (default 12)",
    )
    parser.add_argument("--json", type=Path, help="write the launches and summary here")
    parser.add_argument("--version", action="version", version=f"clustervig {__version__}")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    from clustervig import canonical_name

    try:
        name = canonical_name(args.model)
    except ValueError as err:
        parser.error(str(err))
    if not name.startswith("cvig"):
        parser.error(
            f"--model must be a ClusterViG model (the baselines launch no kernels), "
            f"got {args.model!r}"
        )
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    result = report(name, args.batch_size, args.gpu, dtype, args.kmeans_iters)
    _print(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
