"""The GPUs the static report estimates for: public spec-sheet peaks (dense), what the estimates
divide by, and the assumptions of the memory model (L2 re-reads, launch floor, bandwidth per SM).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEPENDENT_LATENCY_CYCLES",
    "GPU",
    "GPUS",
    "L2_RESIDENT_SHARE",
    "LAUNCH_FLOOR_US",
    "SCHEDULERS_PER_SM",
    "SM_BANDWIDTH_SHARE",
]


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
    # H200 SXM: the H100's SMs, clocks and tensor cores with 141 GB of HBM3e at 4.8 TB/s
    # (NVIDIA H200 datasheet; measured on the lent machine: ~4.3 TB/s copy, ~790 TFLOP/s bf16)
    "h200": GPU(
        "H200 SXM", 90, 132, 1.98, 4.8, 989.0, 494.0, 67.0, 64, 50, 5.5, smem_per_sm_kib=228
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
#: Warp schedulers per SM (Volta to Hopper): each issues at most one warp instruction a cycle.
SCHEDULERS_PER_SM = 4
#: Cycles before a warp can issue again on a dependent chain (an FMA or ALU result feeding the
#: next instruction, the common case in the kernels' loops; shared-memory and global loads take
#: longer, and are counted by the memory bound). A scheduler stays busy only with at least this
#: many resident warps: with fewer, it issues ``warps / DEPENDENT_LATENCY_CYCLES`` a cycle.
DEPENDENT_LATENCY_CYCLES = 6
