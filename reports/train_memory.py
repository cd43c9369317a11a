"""``python -m reports.train_memory``: training peak memory and step time, ClusterViG vs Pyramid
ViG of the same size, at 224 and 448 px (the paper's "trains at 2x resolution" claim).

Every (model, size) runs in a fresh process: one training step (forward, backward, AdamW) to
warm up, then ``--steps`` timed steps inside a peak-memory window (CUDA: the allocator's peak;
CPU: the process's peak resident set above what it held before, Linux ``VmHWM``). Writes
``train-memory-<device>.json`` and ``train-memory-<device>.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from clustervig import __version__
from clustervig.cli import environment_error

DEFAULT_MODELS = ("cvig_ti", "pvig_ti")
DEFAULT_SIZES = (224, 448)


def _one(model_name: str, size: int, batch: int, steps: int, device_name: str) -> dict:
    """Measure in this process (the child)."""
    import torch
    import torch.nn.functional as F

    from clustervig import create_model

    from .common import PeakMemory, Timing, load_average, noise_verdict

    device = torch.device(device_name)
    torch.manual_seed(0)
    model = create_model(model_name, img_size=size, num_classes=1000).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        out = model(x)
        outs = out if isinstance(out, tuple) else (out,)
        loss = sum(F.cross_entropy(o, y) for o in outs) / len(outs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()  # warm-up: allocator and optimizer state in place
    load_before = load_average() if device.type == "cpu" else None
    times = []
    with PeakMemory(device) as peak:
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    load_after = load_average() if device.type == "cpu" else None
    timing = Timing.of(times)  # one sample per step
    noise = noise_verdict(timing, torch.get_num_threads(), load_before, load_after)
    return {
        "model": model_name,
        "img_size": size,
        "batch_size": batch,
        "peak_mib": peak.mib,
        "step_s_median": statistics.median(times),
        "step_s_min": min(times),
        "step_s_max": max(times),
        "steps": steps,
        "load_before": load_before,
        "load_after": load_after,
        "noisy": noise is not None,
        "noise": noise,
    }


def _plot(rows: list[dict], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    sizes = sorted({r["img_size"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        for ax, key, label in (
            (axes[0], "peak_mib", "peak memory (MiB)"),
            (axes[1], "step_s_median", "step time (s, median)"),
        ):
            values = [
                next((r[key] or 0 for r in rows if r["model"] == model and r["img_size"] == s), 0)
                for s in sizes
            ]
            bars = ax.bar([j + i * width for j in range(len(sizes))], values, width, label=model)
            ax.bar_label(bars, fmt="%.0f" if key == "peak_mib" else "%.2f", fontsize=8)
            ax.set_ylabel(label)
    batch = {r["img_size"]: r["batch_size"] for r in rows}
    for ax in axes:
        ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(sizes))])
        ax.set_xticklabels([f"{s} px (batch {batch[s]})" for s in sizes])
        ax.legend()
    fig.suptitle(f"training step (forward + backward + AdamW) on {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reports.train_memory",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
    )
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="NAME")
    parser.add_argument("--sizes", nargs="+", type=int, default=list(DEFAULT_SIZES))
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (default 8)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--device", default=None, help="default: cuda if present, else cpu")
    parser.add_argument("--out", type=Path, default=Path("clustervig-reports"))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # model size, in a child
    parser.add_argument("--version", action="version", version=f"clustervig {__version__}")
    args = parser.parse_args(argv)
    if (code := environment_error("python -m reports.train_memory")) is not None:
        return code
    if args.batch_size < 1 or args.steps < 1:
        parser.error("--batch-size and --steps must be >= 1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.child:
        row = _one(args.child[0], int(args.child[1]), args.batch_size, args.steps, device)
        print(json.dumps(row))
        return 0
    from clustervig.cli import canonical_model_name

    models = [canonical_model_name(parser, m) for m in args.models]
    rows = []
    for model in models:
        for size in args.sizes:
            print(f"{model} at {size} px, batch {args.batch_size} ...", file=sys.stderr, flush=True)
            cmd = [
                sys.executable,
                "-m",
                "reports.train_memory",
                "--child",
                model,
                str(size),
                "--batch-size",
                str(args.batch_size),
                "--steps",
                str(args.steps),
                "--device",
                device,
            ]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                tail = done.stderr.strip().splitlines()[-1:] or ["?"]
                print(f"  failed: {tail[0]}", file=sys.stderr)
                rows.append(
                    {
                        "model": model,
                        "img_size": size,
                        "batch_size": args.batch_size,
                        "error": tail[0],
                        "peak_mib": None,
                        "step_s_median": None,
                    }
                )
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"  peak {row['peak_mib']} MiB, step {row['step_s_median']:.2f} s"
                + (f"  NOISY: {row['noise']}" if row.get("noisy") else ""),
                file=sys.stderr,
            )
            rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    label = "cuda" if device.startswith("cuda") else "cpu"
    meta = {
        "device": torch.cuda.get_device_name()
        if label == "cuda"
        else f"CPU ({os.cpu_count()} cores)",
        "threads": torch.get_num_threads() if not args.threads else args.threads,
        "torch": torch.__version__,
        "clustervig": __version__,
        "date": time.strftime("%Y-%m-%d"),
        "note": "measured; CPU peak = resident set above the process's before-measure level",
    }
    json_path = args.out / f"train-memory-{label}.json"
    json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    png_path = args.out / f"train-memory-{label}.png"
    _plot([r for r in rows if r.get("peak_mib") is not None], png_path, meta["device"])
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
