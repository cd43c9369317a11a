"""The static performance report (estimates from traced launches and compiled SASS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from reports.static import parse_sass

LISTING = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_CTAID.X ;
        /*0020*/                   FFMA R2, R0, R0, R1 ;
        /*0030*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0040*/                   SHFL.BFLY PT, R3, R2, 0x1, 0x1f ;
        /*0050*/               @P0 BRA 0x20 ;
        /*0060*/                   IADD3 R4, R4, 0x1, RZ ;
        /*0070*/               @P1 BRA 0x60 ;
        /*0080*/                   EXIT ;
        /*0090*/                   BRA 0x90 ;
"""


def test_parse_sass_counts_instructions_barriers_and_innermost_loops():
    sass = parse_sass(LISTING)
    assert sass.instructions == 10 and sass.barriers == 1
    # loops: 0x20..0x50 (4 instructions: FFMA, BAR, SHFL, BRA), 0x60..0x70, and the trailing
    # self-branch; the hot loop is the largest innermost one
    assert sass.hot_loop == (4, 1, 1)


def test_report_lists_every_launch_with_estimates(tmp_path):
    out = tmp_path / "ti.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reports.static",
            "--model",
            "cvig_ti",
            "--batch-size",
            "2",
            "--gpu",
            "a100",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ESTIMATE" in done.stdout
    result = json.loads(out.read_text())
    assert result["meta"]["estimate"] is True and result["meta"]["arch"] == "sm_80"
    launches = result["launches"]
    kernels = {row["kernel"] for row in launches}
    assert {
        "_kmeans_kernel",
        "_partition_knn_kernel",
        "_max_aggregate_kernel",
        "_center_tokens_kernel",
        "_gatv2_attention_kernel",
        "_segment_norm_gelu_kernel",
        "matmul",
    } <= kernels
    assert "glue" not in kernels  # every eager op of a DEGC layer is now a kernel
    layers = {row["layer"] for row in launches}
    assert layers == {f"layer {i}" for i in range(12)}
    for row in launches:
        for key in ("layer", "kernel", "programs", "active_programs", "bytes", "flops", "est_us"):
            assert key in row, key
        assert row["est_us"] > 0 and row["active_programs"] <= max(row["programs"], 0) + 0
    knn = next(r for r in launches if r["kernel"] == "_partition_knn_kernel")
    assert knn["registers"] > 0 and not knn["spills"] and knn["sass_instructions"] > 0


_ROLES = """
import json
import torch
from kernels import resources
from kernels.registry import tunables
from reports.static.sass import LOOP_ROLES, loop_roles, parse_sass
found = {}
for name, kernel in (("partition_knn", "_partition_knn_kernel"), ("kmeans_split", "_kmeans_step")):
    t = tunables()[name]
    for dtype, width in ((torch.float32, "e4"), (torch.bfloat16, "e2")):
        compiled = resources.compile_kernel(t, t.default[width], dtype, 90)
        sass = parse_sass(resources.disassemble(compiled))
        roles = loop_roles(kernel, sass)
        found[f"{kernel} {dtype}"] = [sorted(roles), sorted(LOOP_ROLES[kernel]), roles]
print(json.dumps(found))
"""


def test_every_loop_role_is_found_in_float32_and_bfloat16():
    """The work models count loops by role; float32 products run on FMA over shared-memory
    tiles, not tensor cores, and ``--dtype fp32`` used to stop with "loops ['dot'] not found"."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", _ROLES], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for case, (roles, expected, sizes) in found.items():
        assert roles == expected, case
        if "_partition_knn_kernel" in case:  # the product loop is not the norms loop
            assert sizes["dot"] != sizes["norms"], case


def test_issue_model_ranks_a_255_register_program_slower_than_a_64_register_one():
    """Same instructions, 4 warps a program, enough programs for every SM: with 255 registers a
    thread two programs fit an SM (two warps per scheduler: dependent latency not hidden), with
    64 registers eight do (eight warps per scheduler: every cycle issues)."""
    import torch

    from reports.static.estimate import estimate_us, issue_rate_per_sm
    from reports.static.gpus import DEPENDENT_LATENCY_CYCLES, GPUS
    from reports.static.work import Work

    gpu = GPUS["h100"]
    work = Work(bytes=1.0, flops=0.0, tc_flops=0.0, hot_trips=1.0, active_programs=16 * gpu.sms)
    common = {"shared_bytes": 0, "sass_instructions": 100_000, "hot_loop_instructions": 0}
    fat = estimate_us(gpu, work, {**common, "registers": 255}, 4, torch.float32)
    lean = estimate_us(gpu, work, {**common, "registers": 64}, 4, torch.float32)
    assert fat["programs_per_sm"] == 2 and lean["programs_per_sm"] == 8
    assert fat["issue_us"] > lean["issue_us"]
    # 8 resident warps: 2 per scheduler, each issuing once per DEPENDENT_LATENCY_CYCLES
    assert abs(fat["issue_us"] / lean["issue_us"] - DEPENDENT_LATENCY_CYCLES / 2) < 1e-9
    assert issue_rate_per_sm(64) == 4.0 and issue_rate_per_sm(4) < 1.0
