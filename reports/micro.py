"""Microbenchmarks of the DEGC ops: Triton kernel vs the torch reference (and, for k-NN, a dense
masked distance matrix + topk), at the shapes of the ClusterViG variants.

On a GPU every row reports achieved GB/s and TFLOP/s and their fraction of the device's measured
ceilings (a device-to-device copy and a large matrix product). Byte counts are the minimum an op
must move (each input read once, each output written once); FLOPs count the multiply-adds of the
distance products. On a CPU only the torch paths run (the Triton kernels need a GPU; the
interpreter is a correctness tool, not a speed one).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import kernels
from kernels import reference

from .common import environment, measure_peaks, progress, time_call
from .schema import SCHEMA_VERSION

#: Layer shapes of the variants: (nodes N, channels C, clusters kappa, neighbours K of the
#: deepest block).
CASES = {
    "cvig_ti": (196, 192, 4, 18),
    "cvig_s": (196, 320, 4, 18),
    "cvig_b": (196, 640, 4, 18),
    "cvig_b_hr": (784, 640, 6, 18),
}
DEFAULT_BATCHES = {"cuda": [8, 64, 256], "cpu": [1, 4]}
DEFAULT_CASES = {"cuda": ["cvig_s", "cvig_b_hr"], "cpu": ["cvig_ti", "cvig_b_hr"]}


def dense_masked_knn(x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """The straightforward alternative to in-partition k-NN: all N x N distances of an image,
    pairs across clusters masked out, then ``topk``. x ``(B, N, C)``, labels ``(B, N)``."""
    sq = (x * x).sum(-1)
    dist = sq.unsqueeze(2) + sq.unsqueeze(1) - 2.0 * torch.bmm(x, x.transpose(1, 2))
    dist = dist.masked_fill(labels.unsqueeze(2) != labels.unsqueeze(1), float("inf"))
    return dist.topk(k, dim=-1, largest=False).indices


def _inputs(B: int, N: int, C: int, kappa: int, K: int, dtype: torch.dtype, device: torch.device):
    x = F.normalize(torch.randn(B, N, C, device=device), dim=-1).to(dtype)
    labels, _, iterations = kernels.batched_kmeans(x, kappa)
    perm, inverse, offsets, segment = kernels.partition(labels, kappa)
    x_ua = kernels.permute_rows(x.reshape(B * N, C), perm, inverse)
    nbr = kernels.partition_knn(x_ua, offsets, K, N)
    _, argslot = reference.max_aggregate(x_ua.cpu(), nbr.cpu(), True)
    side = int(N**0.5)
    return {
        "feature_map": torch.randn(B, C, side, N // side, device=device).to(dtype),
        "segment": segment,
        "acc": torch.randn(B * N, 2 * C, device=device).to(dtype),
        "table": torch.randn(B * kappa, 2 * C, device=device).to(dtype),
        "norm": torch.rand(5, 2 * C, device=device).to(dtype) + 0.5,
        "centroid_pair": [torch.randn(B, kappa, C, device=device).to(dtype) for _ in range(2)],
        "attention": [torch.randn(C, device=device).to(dtype) for _ in range(2)],
        "x": x,
        "labels": labels,
        "iterations": iterations,
        "perm": perm,
        "inverse": inverse,
        "offsets": offsets,
        "x_ua": x_ua,
        "nbr": nbr,
        "argslot": argslot.to(device),
        "grad": torch.randn(B * N, C, device=device, dtype=dtype),
    }


def _work(
    op: str, t: dict, B: int, N: int, C: int, kappa: int, K: int, esize: int
) -> tuple[float, float]:
    """(minimum bytes moved, FLOPs) of one call."""
    M = B * N
    if op == "kmeans":
        passes = int(t["iterations"].sum()) + B  # assignments; as many centroid updates
        return M * C * esize + M * 4 + B * kappa * C * esize, 2 * 2 * passes * N * kappa * C
    if op == "partition":
        return M * 4 + 3 * M * 4 + (B * kappa + 1) * 4, 0.0
    if op == "permute_rows":
        return 2 * M * C * esize + M * 4, 0.0
    if op in ("partition_knn", "dense_masked_knn"):
        sizes = (t["offsets"][1:] - t["offsets"][:-1]).double()
        flops = 2 * float((sizes * sizes).sum()) * C if op == "partition_knn" else 2 * B * N * N * C
        return M * C * esize + M * K * 4, flops
    if op == "max_aggregate":
        return 2 * M * C * esize + M * C + M * K * 4, 0.0
    if op == "max_aggregate_backward":
        return M * C * esize + M * C + M * K * 4 + M * C * 4, 0.0
    if op == "center_tokens":
        return 2 * M * C * esize, 2.0 * M * C
    if op == "gatv2_attention":
        return 3 * B * kappa * C * esize, 6.0 * B * kappa * kappa * C
    if op == "segment_norm_gelu":
        return 2 * M * 2 * C * esize + M * 4, 8.0 * M * 2 * C
    raise KeyError(op)


def _candidates(
    t: dict, B: int, N: int, C: int, kappa: int, K: int, on_gpu: bool
) -> dict[str, dict[str, Callable[[], object]]]:
    """op -> {implementation: thunk}."""
    x, x_ua, nbr, argslot = t["x"], t["x_ua"], t["nbr"], t["argslot"]
    impls: dict[str, dict[str, Callable[[], object]]] = {
        "kmeans": {"reference": lambda: reference.kmeans(x, kappa, 20)},
        "partition": {"reference": lambda: reference.partition(t["labels"], kappa)},
        "permute_rows": {"reference": lambda: reference.permute_rows(x.reshape(-1, C), t["perm"])},
        "partition_knn": {
            "reference": lambda: reference.partition_knn(x_ua, t["offsets"], K),
            "dense_masked_topk": lambda: dense_masked_knn(x, t["labels"], K),
        },
        "max_aggregate": {"reference": lambda: reference.max_aggregate(x_ua, nbr, True)},
        "max_aggregate_backward": {
            "reference": lambda: reference.max_aggregate_backward(t["grad"], nbr, argslot, True)
        },
        "center_tokens": {"reference": lambda: reference.center_tokens(t["feature_map"])},
        "gatv2_attention": {
            "reference": lambda: reference.gatv2_attention(
                *t["centroid_pair"], *t["attention"], 0.2
            )
        },
        "segment_norm_gelu": {
            "reference": lambda: reference.segment_norm_gelu(
                t["acc"], t["table"], t["segment"], t["norm"], 1e-5
            )
        },
    }
    if on_gpu:
        # Each op's Triton launcher on the op's own arguments (schema order): no kernel module
        # is named here.
        from kernels.registry import OPS

        op_args = {
            "kmeans": (x, kappa, 20),
            "partition": (t["labels"], kappa),
            "permute_rows": (x.reshape(-1, C), t["perm"], t["inverse"]),
            "partition_knn": (x_ua, t["offsets"], K, N, None, False),
            "max_aggregate": (x_ua, nbr, True, True),
            "max_aggregate_backward": (t["grad"], nbr, argslot, True),
            "center_tokens": (t["feature_map"],),
            "gatv2_attention": (*t["centroid_pair"], *t["attention"], 0.2),
            "segment_norm_gelu": (t["acc"], t["table"], t["segment"], t["norm"], 1e-5),
        }
        for op in OPS:
            impls[op.name]["triton"] = lambda _op=op: _op.launch(*op_args[_op.name])
    return impls


def run(
    device: torch.device,
    cases: list[str] | None = None,
    batch_sizes: list[int] | None = None,
    dtypes: list[torch.dtype] | None = None,
    repeats: int = 20,
    on_update: Callable[[dict], None] | None = None,
    deadline: float | None = None,
) -> dict:
    """Time every op and implementation; returns the result document (see ``reports.schema``).

    ``on_update(doc)`` sees the document after every op (``"complete": False`` until the end);
    past ``deadline`` (a ``time.monotonic()`` value) no new shape starts."""
    on_gpu = device.type == "cuda"
    cases = cases or DEFAULT_CASES[device.type]
    batch_sizes = batch_sizes or DEFAULT_BATCHES[device.type]
    dtypes = dtypes or ([torch.bfloat16, torch.float32] if on_gpu else [torch.float32])
    peaks = measure_peaks(device)
    rows = []
    doc = {
        "kind": "micro",
        "schema": SCHEMA_VERSION,
        "environment": environment(device),
        "peaks": peaks,
        "complete": False,
        "rows": rows,
    }
    stopped = False
    for case in cases:
        N, C, kappa, K = CASES[case]
        for B in batch_sizes:
            for dtype in dtypes:
                if deadline is not None and time.monotonic() >= deadline:
                    progress(f"[micro] time cap reached: {case} B={B} {dtype} not measured")
                    stopped = True
                    continue
                torch.manual_seed(0)
                t = _inputs(B, N, C, kappa, K, dtype, device)
                esize = torch.empty((), dtype=dtype).element_size()
                for op, impls in _candidates(t, B, N, C, kappa, K, on_gpu).items():
                    times = {}
                    for impl, thunk in impls.items():
                        reps = repeats if (on_gpu or impl != "reference") else max(3, repeats // 5)
                        timing = time_call(thunk, device, warmup=2, repeats=reps)
                        work_op = "dense_masked_knn" if impl == "dense_masked_topk" else op
                        nbytes, flops = _work(work_op, t, B, N, C, kappa, K, esize)
                        row = {
                            "case": case,
                            "op": op,
                            "impl": impl,
                            "batch_size": B,
                            "dtype": str(dtype).replace("torch.", ""),
                            "N": N,
                            "C": C,
                            "kappa": kappa,
                            "K": K,
                            **timing.as_dict(),
                            "bytes": nbytes,
                            "flops": flops,
                            "gbps": nbytes / timing.median / 1e9,
                            "tflops": flops / timing.median / 1e12 if flops else None,
                        }
                        if op == "kmeans":  # what a static estimate must assume
                            row["lloyd_iterations_mean"] = float(t["iterations"].float().mean())
                        if peaks:
                            row["fraction_of_copy_bw"] = row["gbps"] / peaks["copy_gbps"]
                            if flops:
                                peak = peaks["bf16_tflops" if esize == 2 else "fp32_tflops"]
                                row["fraction_of_matmul"] = row["tflops"] / peak
                        times[impl] = timing.median
                        rows.append(row)
                    if on_update is not None:
                        on_update(doc)
                    base = times.get("reference")
                    fastest = min(times, key=times.get)
                    progress(
                        f"[micro] {case} B={B} {row['dtype']:8s} {op:23s} "
                        + "  ".join(f"{k}={v * 1e3:8.3f}ms" for k, v in times.items())
                        + (
                            f"  (fastest: {fastest}, {base / times[fastest]:.1f}x reference)"
                            if base
                            else ""
                        )
                    )
    doc["complete"] = not stopped
    return doc
