"""``python -m autotune --gpu``: tune every kernel for this GPU and persist the winners.

    python -m autotune --gpu                 # every op, every CViG variant, batch 1..512
    python -m autotune --gpu --ops partition_knn --models cvig_b_hr --batch-sizes 64 256
    python -m autotune --gpu --dry-run       # list the shape buckets, tune nothing
    python -m autotune --gpu --show          # print this GPU's cache
    python -m autotune --interpret           # the whole flow on the CPU (Triton interpreter)

Every run first checks the kernels against their references on the device
(``python -m kernels.selfcheck``) and records the verdicts; a kernel that fails is not tuned
(its op runs the PyTorch reference there). On a GPU, configs that spill registers on the
installed Triton are dropped before timing. Buckets already in the cache (same kernel source
and search space) are skipped unless --force.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

DTYPE_NAMES = ("bfloat16", "float16", "float32")
DEFAULT_MODELS = ("cvig_ti", "cvig_s", "cvig_b", "cvig_b_hr")


DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}


def _dtype_name(text: str) -> str:
    name = DTYPE_ALIASES.get(text.lower(), text.lower())
    if name not in DTYPE_NAMES:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(DTYPE_NAMES)} (or bf16, fp16, fp32), got {text!r}"
        )
    return name


def _positive_ints(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    from kernels.registry import tunable_names  # the ops' names; no kernel module is imported

    parser = argparse.ArgumentParser(
        prog="python -m autotune",
        description="Tune every Triton kernel of clustervig for the GPU at hand (block sizes, "
        "warps, stages per shape bucket) and persist the winners in a per-GPU cache that "
        "kernel launches read.",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--gpu", action="store_true", help="tune on the current CUDA device")
    target.add_argument(
        "--interpret",
        action="store_true",
        help="run the flow on the CPU under the Triton interpreter with the "
        "kernels' tiny interpreter spaces (checks the machinery, not speed)",
    )
    parser.add_argument(
        "--ops",
        nargs="+",
        metavar="OP",
        help="ops to tune (default: all the model launches): " + " ".join(tunable_names()),
    )
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="NAME",
        help="models whose shapes to tune for (default: every CViG variant; --interpret: cvig_ti)",
    )
    parser.add_argument(
        "--batch-sizes",
        nargs="+",
        type=_positive_ints,
        metavar="B",
        help="batch sizes (default 1 8 64 512, one per batch bucket; --interpret: 1)",
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        type=_dtype_name,
        help="feature dtypes: bfloat16 float16 float32 (or bf16 fp16 fp32; default bfloat16 "
        "float32; --interpret: float32)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list what would be tuned (works without a GPU: --dry-run alone lists a GPU run)",
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument(
        "--show",
        action="store_true",
        help="print the cache for this device (alone: every cache file and whether it is used)",
    )
    parser.add_argument("--force", action="store_true", help="retune buckets already cached")
    parser.add_argument(
        "--no-selfcheck",
        action="store_true",
        help="skip the kernel self-check that runs first (python -m kernels.selfcheck)",
    )
    parser.add_argument(
        "--cache-dir",
        help="cache directory (default $CLUSTERVIG_AUTOTUNE_DIR or ~/.cache/clustervig/autotune)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="GPU: warm-up ms per config (do_bench, default 10); CPU: calls (0)",
    )
    parser.add_argument(
        "--repeats",
        type=float,
        default=None,
        help="GPU: timed ms per config (do_bench, default 50); CPU: calls (1)",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop after this long, inside a bucket too (buckets tuned by then are saved; one "
        "cut short is not)",
    )
    return parser


def _version() -> str:
    # From the installed metadata, not by importing clustervig: the parser is built before
    # --interpret sets TRITON_INTERPRET, and nothing may import Triton before that.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"clustervig {version('clustervig')}"
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "clustervig (not installed)"


def _fmt_config(config: dict) -> str:
    short = {"BLOCK_M": "M", "BLOCK_N": "N", "BLOCK_C": "C", "num_warps": "w", "num_stages": "s"}
    order = list(short)
    keys = sorted(config, key=lambda k: (order.index(k) if k in order else -1, k))
    return " ".join(f"{short.get(k, k)}{config[k]}" for k in keys)


def _file_line(cache, label: str, path, identity) -> str:
    tables, problem = cache.inspect_file(path, identity)
    if problem is None:
        entries = sum(len(b) for b in tables["entries"].values() if isinstance(b, dict))
        state = f"{entries} tuned entries, {len(tables['verdicts'])} self-check verdicts"
    else:
        state = problem if problem == "absent" else f"IGNORED: {problem}"
    return f"{label}: {path} ({state})"


def _show_all(cache) -> None:
    """--show with no device: every cache file there is, whatever GPU it belongs to."""
    for label, directory in (("user cache", cache.cache_dir()), ("shipped", cache.shipped_dir())):
        files = sorted(directory.glob("*.json")) if directory.is_dir() else []
        print(f"{label} directory: {directory} ({len(files)} file(s))")
        for path in files:
            try:
                device = json.loads(path.read_text()).get("device")
            except (OSError, ValueError, AttributeError):
                device = None
            if not isinstance(device, dict):
                print(f"  {path.name}: IGNORED: unreadable or not a cache file")
                continue
            print("  " + _file_line(cache, path.name, path, device).split(": ", 1)[1])
    print("(--gpu --show or --interpret --show list the entries for that device)")


def _show(cache, device, identity, selected) -> None:
    print(f"device: {identity}")
    print(_file_line(cache, "user cache", cache.cache_path(identity), identity))
    shipped = cache.cache_path(identity, cache.shipped_dir())
    print(_file_line(cache, "shipped defaults", shipped, identity))
    entries = cache.load(device)
    for op, tunable in selected.items():
        for bucket, entry in sorted(entries.get(op, {}).items()):
            state = "ok" if cache.lookup(tunable, device, bucket) else "stale"
            print(
                f"  {op:24s} {bucket:28s} {_fmt_config(entry.get('config', {})):26s} "
                f"{entry.get('time_ms', float('nan')):9.4f} ms  {state}"
            )


def _space(tunable, launch, interpret: bool) -> list[dict]:
    if interpret:
        return list(tunable.interpret_space)
    return list(tunable.space[launch.bucket.split("/", 1)[0]])


def _dry_run(launches, cached, selected, interpret: bool) -> None:
    for launch in launches:
        state = "cached" if launch in cached else "tune"
        more = f" +{len(launch.sources) - 1}" if len(launch.sources) > 1 else ""
        print(
            f"  {state:6s} {launch.op:24s} {launch.bucket:28s} "
            f"{len(_space(selected[launch.op], launch, interpret)):3d} configs  "
            f"shape {launch.shape}  ({launch.sources[0]}{more})"
        )


def _tune_all(args, cache, device, identity, todo, selected) -> list:
    """Tune every bucket in ``todo``, saving each winner as soon as it is known."""
    import torch

    from .tuner import drop_spilling, tune

    interpret = args.interpret
    warmup = args.warmup if args.warmup is not None else (0 if interpret else 10)
    repeats = args.repeats if args.repeats is not None else (1 if interpret else 50)
    if interpret:
        warmup, repeats = int(warmup), int(repeats)
    outcomes = []
    spill_memo: dict = {}  # every bucket of an op and dtype compiles the same configs
    start = time.perf_counter()
    deadline = None if args.max_minutes is None else time.monotonic() + 60 * args.max_minutes
    for i, launch in enumerate(todo, start=1):
        if deadline is not None and time.monotonic() >= deadline:
            print(
                f"[autotune] --max-minutes {args.max_minutes} reached: {len(todo) - i + 1} "
                "buckets left untuned (run again to continue)"
            )
            break
        tunable = selected[launch.op]
        configs = _space(tunable, launch, interpret)
        if not interpret:
            major, minor = torch.cuda.get_device_capability(device)
            configs, spilling = drop_spilling(
                tunable, configs, launch.dtype, 10 * major + minor, spill_memo
            )
            for config, reason in spilling:
                print(f"    dropped {_fmt_config(config)}: {reason}")
        print(
            f"[autotune] ({i}/{len(todo)}) {launch.op} {launch.bucket}: {len(configs)} configs "
            f"on {launch.shape} ...",
            flush=True,
        )
        outcome = tune(launch, tunable, configs, device, warmup, repeats, deadline)
        if outcome is None:
            print(
                f"[autotune] --max-minutes {args.max_minutes} reached inside {launch.op} "
                f"{launch.bucket}: not saved; {len(todo) - i + 1} buckets left untuned "
                "(run again to continue)"
            )
            break
        for config, reason in outcome.rejected:
            print(f"    rejected {_fmt_config(config)}: {reason}")
        print(
            f"    best {_fmt_config(outcome.best)}  {outcome.best_ms:.4f} ms "
            f"(default {outcome.default_ms:.4f} ms, {_ratio(outcome, interpret)})",
            flush=True,
        )
        entry = cache.make_entry(tunable, outcome.best, outcome.best_ms)
        cache.save_entries(identity, {launch.op: {launch.bucket: entry}})
        outcomes.append(outcome)
    cache.reset()
    print(f"\n[autotune] tuned {len(outcomes)} buckets in {time.perf_counter() - start:.0f} s")
    return outcomes


def _ratio(outcome, interpret: bool) -> str:
    if interpret:  # single interpreter calls measure Python overhead, not the kernel's speed
        return "interpreter timing, not a speedup"
    return f"{outcome.default_ms / outcome.best_ms:.2f}x"


def _summary(cache, identity, outcomes, cached, existing, interpret: bool) -> None:
    print(f"[autotune] summary (cache {cache.cache_path(identity)}):")
    print(f"  {'op':24s} {'bucket':28s} {'best config':26s} {'ms':>9s} {'vs default':>10s}")
    for o in outcomes:
        print(
            f"  {o.launch.op:24s} {o.launch.bucket:28s} {_fmt_config(o.best):26s} "
            f"{o.best_ms:9.4f} {_ratio(o, interpret):>10s}"
        )
    for launch in cached:
        entry = existing.get(launch.op, {}).get(launch.bucket, {})
        print(
            f"  {launch.op:24s} {launch.bucket:28s} {_fmt_config(entry.get('config', {})):26s} "
            f"{entry.get('time_ms', float('nan')):9.4f}     cached"
        )


def _unwritable(directory) -> str | None:
    """Why the cache cannot be written to ``directory`` (None: it can)."""
    import tempfile

    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
    except OSError as err:
        return f"{directory} cannot be written ({err.strerror or err}); give --cache-dir"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--interpret" in argv:
        # Before anything imports Triton: building the parser reads the op registry (the --ops
        # help), and importing torch.library imports Triton, which reads the variable once.
        os.environ["TRITON_INTERPRET"] = "1"
    parser = _parser()
    args = parser.parse_args(argv)
    from clustervig.cli import environment_error

    if (code := environment_error("python -m autotune")) is not None:
        return code
    if args.cache_dir:
        os.environ["CLUSTERVIG_AUTOTUNE_DIR"] = args.cache_dir

    import torch

    if args.show and not (args.gpu or args.interpret):
        from kernels import tuning_cache

        _show_all(tuning_cache)
        return 0
    if not (args.gpu or args.interpret or args.dry_run):
        parser.error("choose --gpu (tune this GPU) or --interpret (the flow on the CPU)")
    gpu_dry_run = args.dry_run and not args.interpret and not torch.cuda.is_available()
    if args.gpu and not torch.cuda.is_available() and not gpu_dry_run:
        print(
            "python -m autotune: --gpu needs a CUDA device and none is visible "
            "(use --interpret to check the flow on the CPU)",
            file=sys.stderr,
        )
        return 2

    from kernels import selfcheck
    from kernels import tuning_cache as cache
    from kernels.registry import tunables
    from kernels.tuning import width_tag

    from .space import model_launches

    if gpu_dry_run:
        print("[autotune] no GPU visible: listing the buckets a GPU run would tune")
        return _gpu_dry_run(args, parser, tunables())
    device = torch.device("cuda") if args.gpu else torch.device("cpu")
    identity = cache.device_identity(device)
    if not (args.show or args.dry_run):
        problem = _unwritable(cache.cache_dir())
        if problem:  # found now, not after the first bucket is tuned and lost
            print(f"python -m autotune: cache directory {problem}", file=sys.stderr)
            return 2
    all_tunables = tunables()
    unknown = [op for op in args.ops or () if op not in all_tunables]
    if unknown:
        parser.error(f"--ops: unknown {unknown}; choose from {list(all_tunables)}")
    selected = {op: all_tunables[op] for op in args.ops or all_tunables}
    if args.show:
        _show(cache, device, identity, selected)
        return 0

    interpret = args.interpret
    models = args.models or (["cvig_ti"] if interpret else list(DEFAULT_MODELS))
    batch_sizes = args.batch_sizes or ([1] if interpret else [1, 8, 64, 512])
    dtype_names = args.dtypes or (["float32"] if interpret else ["bfloat16", "float32"])
    try:
        launches, notes = model_launches(
            selected, models, batch_sizes, [getattr(torch, d) for d in dtype_names]
        )
    except ValueError as err:
        parser.error(str(err))
    for note in notes:
        print(f"[autotune] note: {note}")
    if device.type == "cuda":  # kernels this GPU and Triton never launch are not tuned
        major, minor = torch.cuda.get_device_capability(device)
        launches = [
            launch
            for launch in launches
            if selected[launch.op].builds_for(width_tag(launch.dtype), major * 10 + minor)
        ]

    existing = cache.load(device)
    todo, cached = [], []
    for launch in launches:
        hit = cache.lookup(selected[launch.op], device, launch.bucket)
        (cached if hit is not None and not args.force else todo).append(launch)
    print(
        f"[autotune] {identity['name']} (sm {identity['capability']}, triton {identity['triton']}):"
        f" {len(launches)} buckets, {len(cached)} cached, {len(todo)} to tune"
    )
    if args.dry_run:
        _dry_run(launches, cached, selected, interpret)
        return 0
    if not args.no_selfcheck:
        failed = _selfcheck(selfcheck, device, selected, interpret)
        todo = [launch for launch in todo if launch.op not in failed]
    outcomes = _tune_all(args, cache, device, identity, todo, selected)
    _summary(cache, identity, outcomes, cached, existing, interpret)
    return 0


def _gpu_dry_run(args, parser, all_tunables) -> int:
    """--dry-run for a GPU on a machine without one: the buckets and spaces, no cache state."""
    import torch

    from .space import model_launches

    unknown = [op for op in args.ops or () if op not in all_tunables]
    if unknown:
        parser.error(f"--ops: unknown {unknown}; choose from {list(all_tunables)}")
    selected = {op: all_tunables[op] for op in args.ops or all_tunables}
    try:
        launches, notes = model_launches(
            selected,
            args.models or list(DEFAULT_MODELS),
            args.batch_sizes or [1, 8, 64, 512],
            [getattr(torch, d) for d in (args.dtypes or ["bfloat16", "float32"])],
        )
    except ValueError as err:
        parser.error(str(err))
    for note in notes:
        print(f"[autotune] note: {note}")
    print(f"[autotune] {len(launches)} buckets (cache state unknown without the GPU)")
    _dry_run(launches, [], selected, False)
    return 0


def _selfcheck(selfcheck, device, selected, interpret: bool) -> set[str]:
    """Check the selected kernels against their references on this device, record the
    verdicts, and return the kernels that failed (they are not tuned: they will not launch)."""
    from kernels.registry import KERNELS

    mode = "quick" if interpret else "full"
    print(f"[autotune] self-check ({mode} shapes) before tuning:", flush=True)
    covering = {k: set(checked.tunables) & set(selected) for k, checked in KERNELS.items()}
    kernels_to_check = tuple(k for k in selfcheck.KERNELS if covering[k])
    results = selfcheck.check_all(device, mode, kernels_to_check)
    selfcheck.record(results, device, mode)
    failed = set()
    for res in results:
        state = "ok" if res.ok else f"FAILED: {res.detail}"
        print(f"    {res.kernel:24s} {res.dtype:9s} {state}")
        if not res.ok:
            failed |= covering[res.kernel]  # every tunable its verdict covers
    if failed:
        print(
            f"[autotune] not tuning {sorted(failed)}: they failed the self-check on this "
            "device, so their ops run the PyTorch reference here (please report it)"
        )
    return failed


if __name__ == "__main__":
    sys.exit(main())
