"""The static report of the *before* kernels (commit 6dc2131) under today's estimate model.

    git worktree add /tmp/before 6dc2131
    (cd /tmp/before && git apply <this dir>/before-recorder.patch)
    cp kernels/launches.py /tmp/before/kernels/   # today's recorder (specialise, compile_launch)
    # and kernels.resources.usage_fields appended to /tmp/before/kernels/resources.py
    python reports/results/static/before_report.py /tmp/before cvig_ti 256 h100 OUT.json

Today's ``reports/static/`` (its GPU table, L2 re-read rule, matmul roofline, steady-state
trace) runs against the old ``kernels`` and ``clustervig``; only the work models of the kernels
whose structure changed since are the old ones, below: the old k-means read x twice per Lloyd
iteration (assign, then update: 2 * iters + 2 passes, all but the first re-reads), and the old
k-NN's hot loop ran ``C / BLOCK_C + K`` times per column tile. Every number is an ESTIMATE.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[3]


def main() -> int:
    old_tree, model, batch, gpu, out = sys.argv[1:6]
    sys.path.insert(0, old_tree)  # the old kernels and clustervig
    package = ROOT / "reports" / "static"
    spec = importlib.util.spec_from_file_location(
        "static_now", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    static = importlib.util.module_from_spec(spec)
    sys.modules["static_now"] = static
    spec.loader.exec_module(static)
    import torch

    Work = static.Work

    def old_kmeans(launch, shape, iters):
        x = launch.args["x_ptr"]
        B, N, C = x.shape
        bn, bc = launch.constexprs["BLOCK_N"], launch.constexprs["BLOCK_C"]
        kpad = launch.constexprs["KAPPA_PAD"]
        passes = 2 * iters + 2  # assign + update per iteration, first assign, final mean
        x_bytes = B * N * C * x.dtype.itemsize
        return Work(
            bytes=x_bytes + (iters + 1) * B * N * 4,
            flops=passes * B * 2 * N * kpad * C,
            tc_flops=passes * B * 2 * N * kpad * C,
            hot_trips=passes * math.ceil(N / bn) * math.ceil(C / bc),
            active_programs=B,
            reread_bytes=(passes - 1) * x_bytes,
            distinct_bytes=x_bytes,
        )

    def old_knn(launch, shape, iters):
        x = launch.args["x_ptr"]
        M, C = x.shape
        c = launch.constexprs
        bm, bn, bc, k = c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_C"], c["K"]
        sizes = static.partition_sizes(shape["N"], shape["kappa"]) * shape["B"]
        active = sum(math.ceil(s / bm) for s in sizes)
        tile_pairs = sum(math.ceil(s / bm) * math.ceil(s / bn) for s in sizes)
        return Work(
            bytes=sum(math.ceil(s / bm) * (bm + s) for s in sizes) * C * x.dtype.itemsize
            + M * k * 4,
            flops=tile_pairs * 2 * bm * bn * C,
            tc_flops=tile_pairs * 2 * bm * bn * C,
            hot_trips=tile_pairs / max(active, 1) * (math.ceil(C / bc) + k),
            active_programs=active,
        )

    static.WORK_MODELS["_kmeans_kernel"] = old_kmeans
    static.WORK_MODELS["_partition_knn_kernel"] = old_knn
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}["bf16"]
    result = static.report(model, int(batch), gpu, dtype, 12)
    result["meta"]["commit"] = "6dc2131 (before), work models of the old k-means and k-NN"
    static.print_report(result)
    Path(out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
