"""The report of one forward: every launch with its estimate, the glue and matmul rows of each
layer, the per-layer and per-forward summary, its printout and the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from clustervig import __version__
from clustervig.cli import canonical_model_name

from .estimate import compiled_facts, estimate_us
from .gpus import (
    DEPENDENT_LATENCY_CYCLES,
    GPU,
    GPUS,
    L2_RESIDENT_SHARE,
    LAUNCH_FLOOR_US,
    SCHEDULERS_PER_SM,
    SM_BANDWIDTH_SHARE,
)
from .tracing import trace
from .work import WORK_MODELS

__all__ = ["COLUMNS", "main", "print_report", "report", "summarise"]


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
            f"issue bound at boost clock: each of an SM's {SCHEDULERS_PER_SM} schedulers issues "
            f"one warp instruction a cycle with {DEPENDENT_LATENCY_CYCLES}+ resident warps, one "
            f"per warp every {DEPENDENT_LATENCY_CYCLES} cycles with fewer (dependent-instruction "
            "latency; warps resident from registers and shared memory)",
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


def print_report(result: dict) -> None:
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
    name = canonical_model_name(parser, args.model)
    if not name.startswith("cvig"):
        parser.error(
            f"--model must be a ClusterViG model (the baselines launch no kernels), "
            f"got {args.model!r}"
        )
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    result = report(name, args.batch_size, args.gpu, dtype, args.kmeans_iters)
    print_report(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0
