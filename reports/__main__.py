"""``python -m reports``: benchmarks -> results JSON -> figures and tables.

python -m reports quick      # CViG-Ti vs PViG-Ti vs IViG-Ti in a minute or two, figure + table
python -m reports run        # models x batch sizes on the best device
python -m reports scaling    # one DEGC layer vs one dense k-NN layer, N = 196..3136
python -m reports micro      # kernel microbenchmarks
python -m reports deploy     # CPU / ONNX Runtime speed beside EfficientFormer, LeViT, DeiT ...
python -m reports plot       # figures + tables from the result files (no benchmarking)
python -m reports all        # run + scaling + micro + plot
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

from clustervig import __version__
from clustervig.cli import environment_error, user_error

from . import bench, deploy, micro, plot, scaling
from .arguments import seconds
from .common import (
    FIGURES_DIR,
    PACKAGE_RESULTS_DIR,
    RESULTS_DIR,
    best_device,
    progress,
    result_path,
    set_cpu_threads,
    write_json,
)
from .schema import ResultError, load


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def _dtype_name(text: str) -> str:
    name = DTYPE_ALIASES.get(text.lower(), text.lower())
    if name not in bench.DTYPES:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(sorted(bench.DTYPES))} (or fp32, bf16, fp16), got {text!r}"
        )
    return name


DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def _model(name: str) -> str:
    try:
        return bench.resolve_model_name(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _device(name: str) -> torch.device:
    if name == "auto":
        return best_device()
    if name == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"clustervig {__version__}")
    parser.add_argument(
        "--device",
        type=_device,
        default="auto",
        help="auto (CUDA if present, else CPU), cpu or cuda",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help=f"where result JSON goes (default ./{RESULTS_DIR}; this repository's committed "
        f"results: --results-dir {PACKAGE_RESULTS_DIR.relative_to(Path(__file__).parents[1])})",
    )
    parser.add_argument(
        "--threads",
        type=_count(1),
        default=None,
        help="CPU threads (torch.set_num_threads; default: torch's choice). Recorded with "
        "OMP_WAIT_POLICY and the load average in the results",
    )


def _run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        nargs="+",
        type=_model,
        metavar="NAME",
        help="models (registry names, e.g. cvig_ti pvig_s; timm:efficientformer_l1 "
        "with timm). Default: CPU cvig_ti cvig_s pvig_ti pvig_s ivig_ti; CUDA all "
        "ClusterViG, PViG and IViG variants (+ EfficientFormer if timm is installed)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=_positive_ints,
        metavar="'1 2 4'",
        help="batch sizes (default: CPU 1 2 4 8 16; CUDA 1 8 16 ... 512)",
    )
    parser.add_argument(
        "--dtype",
        type=_dtype_name,
        help="float32, or bfloat16/float16 autocast (also fp32, bf16, fp16; default: CPU "
        "float32, CUDA bfloat16)",
    )
    parser.add_argument(
        "--compile",
        nargs="+",
        choices=bench.COMPILE_MODES,
        dest="compile_modes",
        help="torch.compile modes to run, 'none' = eager (default: CPU none, CUDA default)",
    )
    parser.add_argument(
        "--warmup", type=_count(0), default=None, help="untimed calls first (default CPU 1, CUDA 5)"
    )
    parser.add_argument(
        "--repeats", type=_count(1), default=None, help="timed calls (default CPU 5, CUDA 30)"
    )
    parser.add_argument("--img-size", type=int, default=224)


def _capped(parser: argparse.ArgumentParser) -> None:
    """The options a time-capped run (``.ci/gpu-session``) gives: one output file, rewritten
    after every row, and a time cap after which nothing new starts."""
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="write the results to FILE (rewritten after every row) instead of --results-dir",
    )
    parser.add_argument(
        "--max-seconds",
        type=seconds(),
        metavar="S",
        help="start nothing new after S seconds; rows not reached say 'skipped' (default: none)",
    )


def _deadline(args) -> float | None:
    seconds = getattr(args, "max_seconds", None)
    return None if seconds is None else time.monotonic() + seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reports",
        description="Benchmark ClusterViG against the ViG baselines and draw the paper's Fig. 5 "
        "and Table VI from the results.",
    )
    parser.add_argument("--version", action="version", version=f"clustervig {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{quick,run,scaling,micro,deploy,plot,all}")
    quick = sub.add_parser(
        "quick",
        help="the main job: CViG-Ti side by side with PViG-Ti and IViG-Ti over a few batch "
        "sizes, then the Fig. 5-style speedup plot and the throughput table",
    )
    _common(quick)
    quick.add_argument(
        "--out", type=Path, default=FIGURES_DIR, help=f"figure directory (default ./{FIGURES_DIR})"
    )
    run = sub.add_parser("run", help="benchmark models x batch sizes, write results JSON")
    _common(run)
    _run_args(run)
    _capped(run)
    sc = sub.add_parser("scaling", help="one DEGC layer vs one dense k-NN layer at N = 196..3136")
    _common(sc)
    sc.add_argument("--batch-size", type=int, default=None, help="default: CPU 2, CUDA 32")
    mi = sub.add_parser("micro", help="kernel microbenchmarks (Triton vs torch reference)")
    _common(mi)
    mi.add_argument("--batch-sizes", type=_positive_ints, metavar="'8 64'")
    mi.add_argument("--cases", nargs="+", choices=sorted(micro.CASES))
    mi.add_argument(
        "--dtype",
        dest="micro_dtype",
        type=_dtype_name,
        help="one feature dtype (float32, bfloat16, float16; default: CUDA bfloat16 and "
        "float32, CPU float32)",
    )
    _capped(mi)
    de = sub.add_parser(
        "deploy",
        help="CPU deployment: our models eager / inference form / torch.compile / ONNX Runtime "
        "beside timm's EfficientFormer-L1, EfficientFormerV2-S2, LeViT-192, ResNet-18, DeiT-Ti "
        "(eager and ONNX Runtime), interleaved in one process; result JSON, figure and table",
    )
    de.add_argument("--version", action="version", version=f"clustervig {__version__}")
    de.add_argument(
        "--models",
        nargs="+",
        type=_model,
        metavar="NAME",
        help=f"this project's models (default {' '.join(deploy.DEFAULT_MODELS)})",
    )
    de.add_argument(
        "--peers",
        nargs="*",
        metavar="TIMM_NAME",
        help=f"timm models to compare with (default {' '.join(deploy.DEFAULT_PEERS)}; none: "
        "--peers with no names)",
    )
    de.add_argument(
        "--forms",
        nargs="+",
        choices=deploy.FORMS,
        help=f"forms of our models (default all: {' '.join(deploy.FORMS)}); timm's run eager, "
        "and in ONNX Runtime when onnx is among them",
    )
    de.add_argument(
        "--batch-sizes", type=_positive_ints, metavar="'1 8'", help="batch sizes (default 1 8)"
    )
    de.add_argument("--threads", type=_count(1), default=2, help="CPU threads (default 2)")
    de.add_argument("--warmup", type=_count(1), default=2, help="untimed calls (default 2)")
    de.add_argument(
        "--repeats", type=_count(3), default=7, help="interleaved timed rounds (default 7)"
    )
    de.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help=f"where the result JSON goes (default ./{RESULTS_DIR})",
    )
    de.add_argument(
        "--out", type=Path, default=FIGURES_DIR, help=f"figure directory (default ./{FIGURES_DIR})"
    )
    de.add_argument(
        "--parity",
        action="store_true",
        help="instead of timing: ONNX Runtime vs PyTorch (float32 and float64) at full depth on "
        "CViG-Ti and CViG-S (or --models), 5 seeds x 4 images, calibrated random weights",
    )
    _capped(de)
    pl = sub.add_parser("plot", help="draw figures and tables from result files")
    pl.add_argument(
        "results",
        nargs="*",
        type=Path,
        help=f"result files or directories (default ./{RESULTS_DIR}: newest per device)",
    )
    pl.add_argument(
        "--out", type=Path, default=FIGURES_DIR, help=f"output directory ({FIGURES_DIR})"
    )
    al = sub.add_parser("all", help="run + scaling + micro + plot")
    _common(al)
    _run_args(al)
    al.add_argument(
        "--out", type=Path, default=FIGURES_DIR, help=f"figure directory ({FIGURES_DIR})"
    )
    return parser


def _defaults(args: argparse.Namespace) -> None:
    """Device-dependent defaults of ``run`` and ``all``."""
    cuda = args.device.type == "cuda"
    if args.models is None:
        args.models = list(bench.DEFAULT_MODELS[args.device.type])
        if cuda and bench.timm_available():
            args.models += [f"timm:{m}" for m in bench.TIMM_MODELS]
    if args.dtype is None:
        args.dtype = "bfloat16" if cuda else "float32"
    if args.compile_modes is None:
        # CUDA: compiled, plus CUDA graphs at small batch (bench.REDUCE_OVERHEAD_MAX_BATCH)
        args.compile_modes = ["default", "reduce-overhead"] if cuda else ["none"]
    if args.warmup is None:
        args.warmup = 5 if cuda else 1
    if args.repeats is None:
        args.repeats = 30 if cuda else 5


def _cmd_run(args) -> Path:
    batch_sizes = args.batch_sizes or bench.DEFAULT_BATCH_SIZES[args.device.type]
    path = getattr(args, "json", None) or result_path("models", args.device, args.results_dir)
    progress(f"[run] results go to {path} (rewritten after every row)")
    doc = bench.run(
        args.device,
        args.models,
        batch_sizes,
        bench.DTYPES[args.dtype],
        tuple(args.compile_modes),
        args.img_size,
        args.warmup,
        args.repeats,
        on_update=lambda partial: write_json(path, partial),
        deadline=_deadline(args),
    )
    write_json(path, doc)
    progress(f"[run] wrote {path}" + ("" if doc["complete"] else " (stopped at --max-seconds)"))
    return path


def _cmd_scaling(args) -> Path:
    batch = getattr(args, "batch_size", None) or (32 if args.device.type == "cuda" else 2)
    dtype = torch.bfloat16 if args.device.type == "cuda" else torch.float32
    doc = scaling.run(args.device, batch, dtype=dtype)
    path = write_json(result_path("scaling", args.device, args.results_dir), doc)
    progress(f"[scaling] wrote {path}")
    return path


def _cmd_micro(args, batch_sizes: list[int] | None = None) -> Path:
    path = getattr(args, "json", None) or result_path("micro", args.device, args.results_dir)
    dtype = getattr(args, "micro_dtype", None)
    doc = micro.run(
        args.device,
        getattr(args, "cases", None),
        batch_sizes,
        dtypes=None if dtype is None else [bench.DTYPES[dtype]],
        on_update=lambda partial: write_json(path, partial),
        deadline=_deadline(args),
    )
    write_json(path, doc)
    progress(f"[micro] wrote {path}" + ("" if doc["complete"] else " (stopped at --max-seconds)"))
    return path


QUICK_MODELS = ["cvig_ti", "pvig_ti", "ivig_ti"]
QUICK_BATCH_SIZES = {"cpu": [1, 4, 8], "cuda": [1, 8, 64, 256]}


def _cmd_quick(args) -> None:
    cuda = args.device.type == "cuda"
    args.models, args.batch_sizes = QUICK_MODELS, QUICK_BATCH_SIZES[args.device.type]
    args.dtype, args.compile_modes = (
        ("bfloat16", ["default", "reduce-overhead"]) if cuda else ("float32", ["none"])
    )
    args.warmup, args.repeats, args.img_size = (5, 30, 224) if cuda else (1, 5, 224)
    path = _cmd_run(args)
    doc = load(path)
    written = plot.render([path], args.out)
    rows = [r for r in doc["rows"] if r["status"] == "ok"]
    by = {(r["model"], r["batch_size"]): r for r in rows}
    print("\nimages / s (median; p10-p90 in brackets) and speedup over PViG-Ti:")
    print(f"  {'batch':>5s} " + " ".join(f"{bench.display_name(m):>24s}" for m in QUICK_MODELS))
    for b in args.batch_sizes:
        cells = []
        for m in QUICK_MODELS:
            r, base = by.get((m, b)), by.get(("pvig_ti", b))
            if r is None:
                cells.append(f"{'-':>24s}")
                continue
            speed = f" {base['median_ms'] / r['median_ms']:.2f}x" if base else ""
            noisy = "*" if r.get("noisy") else ""
            cells.append(
                f"{r['throughput']:8.1f}{noisy} [{b * 1e3 / r['p90_ms']:.0f}-"
                f"{b * 1e3 / r['p10_ms']:.0f}]{speed:>7s}".rjust(24)
            )
        print(f"  {b:5d} " + " ".join(cells))
    if any(r.get("noisy") for r in rows):
        print("  * flagged as noise (spread or machine load): rerun on a quieter machine")
    print("\nwritten:")
    for file in [path, *written]:
        print(f"  {file}")


def deploy_requirements(args) -> str | None:
    """What ``reports deploy`` with these options needs and this Python lacks (None: nothing)."""
    wanted = []
    if "onnx" in (args.forms or deploy.FORMS):
        wanted += ["onnx", "onnxruntime"]
    if args.peers != []:
        wanted.append("timm")
    missing = [m for m in wanted if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (
        f"needs {', '.join(missing)} (pip install -e '.[test]'), or --peers with no names and "
        "--forms without onnx"
    )


def _cmd_deploy(args) -> None:
    """``python -m reports deploy``: run, write the JSON after every batch size, draw."""
    device = torch.device("cpu")
    if args.parity:
        doc = deploy.onnx_parity(
            args.models or ["cvig_ti", "cvig_s"], list(range(5)), 4, threads=args.threads
        )
        path = write_json(result_path("parity", device, args.results_dir), doc)
        progress(f"[deploy] wrote {path}")
        print(deploy.parity_summary(doc))
        return
    note = deploy.omp_policy_note()
    if note:
        progress(f"[deploy] note: {note}")
    path = getattr(args, "json", None) or result_path("deploy", device, args.results_dir)
    progress(f"[deploy] results go to {path} (rewritten after every batch size)")
    doc = deploy.run(
        args.models,
        args.peers,
        args.batch_sizes,
        args.forms,
        threads=args.threads,
        warmup=args.warmup,
        repeats=args.repeats,
        on_update=lambda partial: write_json(path, partial),
        deadline=_deadline(args),
    )
    write_json(path, doc)
    for file in [path, *plot.render([path], args.out)]:
        progress(f"[deploy] wrote {file}")
    print()
    print(plot.deploy_table(doc))


def _cmd_plot(paths: list[Path] | None, out: Path) -> None:
    for file in plot.render(paths or None, out):
        progress(f"[plot] wrote {file}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.error(
            "choose a command: quick, run, scaling, micro, deploy, plot or all (see --help)"
        )
    if (code := environment_error("python -m reports")) is not None:
        return code
    set_cpu_threads(getattr(args, "threads", None))
    start = time.perf_counter()
    if args.command in ("run", "all"):
        _defaults(args)
    try:
        if args.command == "quick":
            _cmd_quick(args)
        elif args.command == "run":
            _cmd_run(args)
        elif args.command == "scaling":
            _cmd_scaling(args)
        elif args.command == "micro":
            _cmd_micro(args, args.batch_sizes)
        elif args.command == "deploy":
            if (missing := deploy_requirements(args)) is not None:
                return user_error("python -m reports deploy", missing)
            _cmd_deploy(args)
        elif args.command == "plot":
            _cmd_plot(args.results, args.out)
        elif args.command == "all":
            written = [_cmd_run(args), _cmd_scaling(args), _cmd_micro(args)]
            _cmd_plot(written, args.out)
    except (ResultError, FileNotFoundError) as err:
        return user_error(f"python -m reports {args.command}", err)
    progress(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    if "OMP_WAIT_POLICY" not in os.environ:
        # Busy-waiting OpenMP threads make timings on a shared machine meaningless (and the
        # runtime reads the variable once, at start-up): start again with passive waiting.
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, "-m", "reports", *sys.argv[1:]])
    sys.exit(main())
