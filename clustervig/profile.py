"""``python -m clustervig.profile``: where one forward's time goes, DEGC step by DEGC step.

python -m clustervig.profile --model cvig_ti --batch-size 8 --threads 2
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from . import __version__

#: DEGC steps by custom op (their time includes everything they run inside).
GRAPH_STEPS = {
    "clustervig::kmeans": "k-means",
    "clustervig::partition": "partition",
    "clustervig::partition_knn": "k-NN",
    "clustervig::permute_rows": "permutes",
    "clustervig::max_aggregate": "aggregation",
    "clustervig::max_aggregate_backward": "aggregation",
}
#: Other time by the aten op that spent it (self time, outside the custom ops).
OTHER_STEPS = {
    "convolutions": ("conv", "mkldnn_convolution"),
    "matmuls": ("addmm", "bmm", "aten::mm", "linear", "matmul", "baddbmm"),
    "normalisation": ("batch_norm", "layer_norm"),
}


def _step_of(name: str) -> str:
    if name in GRAPH_STEPS:
        return GRAPH_STEPS[name]
    for step, needles in OTHER_STEPS.items():
        if any(needle in name for needle in needles):
            return step
    return "other ops"


def _inside_graph_op(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in GRAPH_STEPS:
            return True
        parent = parent.cpu_parent
    return False


@contextlib.contextmanager
def _named_graph_ops():
    """Each DEGC op call inside a profiler range named after its custom op. The ops record
    themselves too, but not on every torch version (2.14 skips the record of an op with an
    autograd formula when no gradient is needed), so the ranges make attribution the same
    everywhere; a range inside a range of the same name counts once (``_inside_graph_op``)."""
    from torch.profiler import record_function

    from . import degc

    originals = {name: getattr(degc, name) for name in _DEGC_OPS}

    def named(name, fn):
        def call(*args, **kwargs):
            with record_function(f"clustervig::{name}"):
                return fn(*args, **kwargs)

        return call

    try:
        for name, fn in originals.items():
            setattr(degc, name, named(_DEGC_OPS[name], fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(degc, name, fn)


#: The custom ops ``clustervig.degc`` calls, by the name it imports them under.
_DEGC_OPS = {
    "batched_kmeans": "kmeans",
    "partition": "partition",
    "partition_knn": "partition_knn",
    "permute_rows": "permute_rows",
}


def profile_forward(model: nn.Module, x: torch.Tensor, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per step of one eval forward (median of ``repeats`` profiled calls):
    the DEGC steps (custom ops, everything inside them included), convolutions, matmuls,
    normalisation, other aten ops, and ``python / glue`` (wall time no op accounts for)."""
    import statistics
    import time

    from torch.profiler import ProfilerActivity, profile

    runs: list[dict[str, float]] = []
    with torch.no_grad(), _named_graph_ops():
        model(x)  # warm-up
        for _ in range(repeats):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                start = time.perf_counter()
                model(x)
                wall = (time.perf_counter() - start) * 1e3
            steps: dict[str, float] = {}
            for event in prof.events():
                if event.name in GRAPH_STEPS:
                    if not _inside_graph_op(event):
                        step = GRAPH_STEPS[event.name]
                        steps[step] = steps.get(step, 0.0) + event.cpu_time_total / 1e3
                elif event.name.startswith("aten::") and not _inside_graph_op(event):
                    step = _step_of(event.name)
                    steps[step] = steps.get(step, 0.0) + event.self_cpu_time_total / 1e3
            steps["python / glue"] = max(0.0, wall - sum(steps.values()))
            steps["forward"] = wall
            runs.append(steps)
    names = {name for run in runs for name in run}
    return {name: statistics.median(run.get(name, 0.0) for run in runs) for name in names}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys

    from .registry import canonical_name, create_model

    # A CUDA build of torch on a machine without a GPU: the profiler's GPU probe would print
    # "gpuGetDeviceCount failed" into the report (this command profiles the CPU only).
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    parser = argparse.ArgumentParser(
        prog="python -m clustervig.profile",
        description="Where one eval forward's time goes on the CPU: each DEGC step (k-means, "
        "partition, k-NN, permutes, aggregation), convolutions, matmuls, normalisation, "
        "other ops and Python glue, in ms and as a share of the forward.",
    )
    parser.add_argument("--model", default="cvig_ti", help="model name (default cvig_ti)")
    parser.add_argument("--batch-size", type=int, default=8, help="images (default 8)")
    parser.add_argument("--img-size", type=int, default=224, help="image size (default 224)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="profiled forwards (median)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    parser.add_argument("--version", action="version", version=f"clustervig {__version__}")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1:
        parser.error("--batch-size and --repeats must be >= 1")
    try:
        name = canonical_name(args.model)
    except ValueError as err:
        parser.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    try:
        steps = profile_forward(model, x, args.repeats)
    except ValueError as err:
        print(f"python -m clustervig.profile: {err}", file=sys.stderr)
        return 2
    total = steps.pop("forward")
    order = ["k-means", "partition", "k-NN", "permutes", "aggregation"]
    graph = sum(steps.get(s, 0.0) for s in order)
    print(
        f"{name}, batch {args.batch_size}, {args.img_size} px, {torch.get_num_threads()} "
        f"threads: forward {total:.1f} ms (median of {args.repeats})"
    )
    print(f"  {'step':16s} {'ms':>9s} {'share':>7s}")
    for step in order + sorted(set(steps) - set(order)):
        if step in steps:
            print(f"  {step:16s} {steps[step]:9.1f} {100 * steps[step] / total:6.1f}%")
    print(f"  {'graph ops':16s} {graph:9.1f} {100 * graph / total:6.1f}%  (the DEGC steps above)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {
                    "model": name,
                    "batch_size": args.batch_size,
                    "forward_ms": total,
                    "steps_ms": steps,
                    "graph_ops_ms": graph,
                },
                handle,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
