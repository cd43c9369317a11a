"""A launch compiled for the GPU (registers, shared memory, spills, SASS counts) and its
estimated time: the largest of the memory, tensor-core and issue bounds, at least the launch
floor."""

from __future__ import annotations

import math

import torch

from .gpus import (
    DEPENDENT_LATENCY_CYCLES,
    GPU,
    L2_RESIDENT_SHARE,
    LAUNCH_FLOOR_US,
    SCHEDULERS_PER_SM,
    SM_BANDWIDTH_SHARE,
)
from .sass import loop_roles, parse_sass
from .work import Work

__all__ = ["compiled_facts", "estimate_us", "issue_rate_per_sm", "programs_per_sm"]

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


def issue_rate_per_sm(warps_per_sm: float) -> float:
    """Warp instructions an SM issues per cycle with ``warps_per_sm`` resident warps: each of
    its schedulers one a cycle when it holds at least ``DEPENDENT_LATENCY_CYCLES`` warps, else
    one per warp every ``DEPENDENT_LATENCY_CYCLES`` cycles (latency not hidden)."""
    per_scheduler = warps_per_sm / SCHEDULERS_PER_SM
    return SCHEDULERS_PER_SM * min(1.0, per_scheduler / DEPENDENT_LATENCY_CYCLES)


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
    # Warps resident per SM: as many programs as registers and shared memory allow, or as
    # there are to run; the schedulers hide dependent latency only with enough of them.
    warps_per_sm = min(gpu.max_warps_per_sm, warps * min(per_sm, math.ceil(active / busy_sms)))
    issue_rate = busy_sms * issue_rate_per_sm(warps_per_sm) * gpu.clock_ghz * 1e9  # warp instr/s
    issue = active * warps * per_warp / issue_rate * 1e6
    return {
        "memory_us": memory,
        "tensor_us": tensor,
        "issue_us": issue,
        "est_us": max(memory, tensor, issue, LAUNCH_FLOOR_US),
        "occupancy": min(1.0, per_sm * warps / gpu.max_warps_per_sm),
        "programs_per_sm": per_sm,
    }
