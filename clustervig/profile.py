"""``python -m clustervig.profile``: where one forward's time goes, DEGC step by DEGC step.

python -m clustervig.profile --model cvig_ti --batch-size 8 --threads 2
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from . import __version__
from .cli import environment_error

#: The graph ops in the order of a DEGC layer: the module that calls them and the name it
#: imports them under, their custom op's name (``clustervig::<op>``) and their step.
_GRAPH_OPS = [
    ("degc", "batched_kmeans", "kmeans", "k-means"),
    ("degc", "partition", "partition", "partition"),
    ("degc", "partition_knn", "partition_knn", "k-NN"),
    ("graph_updates", "max_aggregate", "max_aggregate", "aggregation"),
]
#: DEGC steps by custom op (their time includes everything they run inside).
GRAPH_STEPS = {f"clustervig::{op}": step for _, _, op, step in _GRAPH_OPS}
GRAPH_STEPS["clustervig::max_aggregate_backward"] = "aggregation"
#: The DEGC steps, in the order of a layer.
GRAPH_ORDER = list(dict.fromkeys(step for _, _, _, step in _GRAPH_OPS))
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
def _wrapped_graph_ops(wrap):
    """Every graph-op call made by the model replaced by ``wrap(op, step, fn)`` meanwhile."""
    from . import degc, graph_updates

    modules = {"degc": degc, "graph_updates": graph_updates}
    saved = [(modules[m], name, getattr(modules[m], name)) for m, name, _, _ in _GRAPH_OPS]
    try:
        for (module, name, fn), (_, _, op, step) in zip(saved, _GRAPH_OPS, strict=True):
            setattr(module, name, wrap(op, step, fn))
        yield
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


def _named_graph_ops():
    """Each graph-op call inside a profiler range named after its custom op. The ops record
    themselves too, but not on every torch version (2.14 skips the record of an op with an
    autograd formula when no gradient is needed) nor on every path (eager CPU calls skip the
    dispatcher), so the ranges make attribution the same everywhere; a range inside a range of
    the same name counts once (``_inside_graph_op``)."""
    from torch.profiler import record_function

    def named(op, step, fn):
        def call(*args, **kwargs):
            with record_function(f"clustervig::{op}"):
                return fn(*args, **kwargs)

        return call

    return _wrapped_graph_ops(named)


def _timed_graph_ops(totals: dict[str, float]):
    """Add the wall time of every graph-op call to ``totals[step]`` (ms). On the CPU an op has
    finished when it returns, so no profiler is needed, and none of its overhead is counted."""
    import time

    def timed(op, step, fn):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[step] = totals.get(step, 0.0) + (time.perf_counter() - start) * 1e3

        return call

    return _wrapped_graph_ops(timed)


def time_graph_ops(model: nn.Module, x: torch.Tensor, repeats: int = 3) -> dict[str, float]:
    """Milliseconds of one eval forward (``"forward"``) and of each graph step in it, timed by
    the wall clock without the profiler (median of ``repeats`` calls): the profiler's per-op
    cost inflates the graph steps, which are many small ops, more than the convolutions."""
    import statistics
    import time

    runs: list[dict[str, float]] = []
    with torch.no_grad():
        model(x)  # warm-up
        for _ in range(repeats):
            steps: dict[str, float] = {}
            with _timed_graph_ops(steps):
                start = time.perf_counter()
                model(x)
                steps["forward"] = (time.perf_counter() - start) * 1e3
            runs.append(steps)
    names = {name for run in runs for name in run}
    return {name: statistics.median(run.get(name, 0.0) for run in runs) for name in names}


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

    from .cli import canonical_model_name, user_error
    from .registry import create_model

    # A CUDA build of torch on a machine without a GPU: the profiler's GPU probe would print
    # "gpuGetDeviceCount failed" into the report (this command profiles the CPU only).
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    parser = argparse.ArgumentParser(
        prog="python -m clustervig.profile",
        description="Where one eval forward's time goes on the CPU: each DEGC step (k-means, "
        "partition, k-NN, aggregation), convolutions, matmuls, normalisation, "
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
    if (code := environment_error("python -m clustervig.profile")) is not None:
        return code
    if args.batch_size < 1 or args.repeats < 1:
        parser.error("--batch-size and --repeats must be >= 1")
    name = canonical_model_name(parser, args.model)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    try:
        timed = time_graph_ops(model, x, args.repeats)
        steps = profile_forward(model, x, args.repeats)
    except ValueError as err:
        return user_error("python -m clustervig.profile", err)
    total = steps.pop("forward")
    graph = sum(steps.get(s, 0.0) for s in GRAPH_ORDER)
    timed_total = timed.pop("forward")
    timed_graph = sum(timed.values())
    print(
        f"{name}, batch {args.batch_size}, {args.img_size} px, {torch.get_num_threads()} "
        f"threads: forward {timed_total:.1f} ms, {total:.1f} ms under the profiler "
        f"(medians of {args.repeats})"
    )
    print(f"  {'step':16s} {'ms':>9s} {'share':>7s}  {'timed ms':>9s} {'share':>7s}")
    for step in GRAPH_ORDER + sorted(set(steps) - set(GRAPH_ORDER)):
        if step in steps:
            line = f"  {step:16s} {steps[step]:9.1f} {100 * steps[step] / total:6.1f}%"
            if step in timed:
                line += f"  {timed[step]:9.1f} {100 * timed[step] / timed_total:6.1f}%"
            print(line)
    print(
        f"  {'graph ops':16s} {graph:9.1f} {100 * graph / total:6.1f}%  {timed_graph:9.1f} "
        f"{100 * timed_graph / timed_total:6.1f}%  (the DEGC steps above)"
    )
    print(
        "  ms and share: under torch.profiler (every op's time, but the profiler's per-op cost "
        "inflates the small ones); timed: the graph ops by the wall clock, without the profiler"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {
                    "model": name,
                    "batch_size": args.batch_size,
                    "threads": torch.get_num_threads(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                    "forward_ms": total,
                    "steps_ms": steps,
                    "graph_ops_ms": graph,
                    "timed": {
                        "forward_ms": timed_total,
                        "steps_ms": timed,
                        "graph_ops_ms": timed_graph,
                        "graph_ops_share": timed_graph / timed_total,
                    },
                },
                handle,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
