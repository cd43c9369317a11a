"""``python -m clustervig``: build every model, print params, GMACs and a CPU forward check."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from . import __version__
from ._config import parse_override
from .cli import canonical_model_name, environment_error, user_error
from .counting import count_gmacs, count_parameters
from .paper import COUNTER_GMACS, PAPER_GMACS, PAPER_PARAMS_M
from .registry import DISPLAY_NAMES, create_model, list_models


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m clustervig",
        description=(
            "Build ClusterViG variants and the ViG baselines; print trainable parameters, GMACs "
            "(torch FlopCounterMode, MACs = FLOPs / 2, 224x224) next to the published numbers, "
            "and run an eval-mode forward pass on the CPU as a check."
        ),
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list_models(),
        metavar="NAME",
        help=f"models to build (default: all): {', '.join(list_models())}",
    )
    parser.add_argument("--batch-size", type=int, default=2, help="forward-check batch (default 2)")
    parser.add_argument("--img-size", type=int, default=224, help="forward-check image size")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and inputs")
    parser.add_argument("--no-forward", action="store_true", help="skip the forward check")
    parser.add_argument("--version", action="version", version=f"clustervig {__version__}")
    args = parser.parse_args(argv)
    args.models = [canonical_model_name(parser, m) for m in args.models]
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def _fmt(value: float | None, spec: str) -> str:
    width = spec.split(".")[0]
    return format("-", f">{width}") if value is None else format(value, spec)


def _convert(argv: list[str]) -> int:
    """``python -m clustervig convert SRC DST --model NAME``: a checkpoint in any layout
    :func:`clustervig.load_checkpoint` reads, written in this project's keys (safetensors)."""
    parser = argparse.ArgumentParser(
        prog="python -m clustervig convert",
        description="Convert a checkpoint (ours, the ClusterViG authors' or the official ViG / "
        "Pyramid ViG release) to this project's keys and write it as safetensors.",
    )
    parser.add_argument("source", help="checkpoint to read (.pth, .pt or .safetensors)")
    parser.add_argument("destination", help="file to write (.safetensors)")
    parser.add_argument(
        "--model",
        help="the model it belongs to, e.g. cvig_ti (default: the one the checkpoint records; "
        "needed for the authors' and the official ViG files)",
    )
    _model_args(parser)
    parser.add_argument("--version", action="version", version=f"clustervig {__version__}")
    args = parser.parse_args(argv)
    import json

    from safetensors.torch import save_file

    from .checkpoint import CONFIG_METADATA_KEY, load_checkpoint, read_with_config
    from .registry import model_options

    where = "python -m clustervig convert"
    try:
        overrides = dict(parse_override(item) for item in args.model_args)
        source, recorded = read_with_config(args.source)
        if args.model is None and recorded is None:
            raise ValueError("--model: the checkpoint does not say which model it holds; name it")
        name, options = model_options(args.model, overrides, recorded, where)
        model = create_model(name, **options)
        report = load_checkpoint(model, source)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        metadata = {CONFIG_METADATA_KEY: json.dumps({"model": name, "options": options})}
        try:
            save_file(state, args.destination, metadata=metadata)
        except OSError as err:
            raise ValueError(f"cannot write {args.destination} ({err.strerror or err})") from None
    except ValueError as err:
        return user_error(where, err)
    print(f"{report}\nwrote {args.destination} ({len(state)} tensors, {name} {options})")
    return 0


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-args",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides of the model (e.g. groups=1 num_classes=10); a checkpoint that "
        "records its model fills in the rest",
    )


def _export(argv: list[str]) -> int:
    """``python -m clustervig export NAME --format onnx|pt2``."""
    parser = argparse.ArgumentParser(
        prog="python -m clustervig export",
        description="Export a model for deployment: ONNX (the DEGC ops translated to standard "
        "operators: k-means as a loop that stops when the batch converged, the k-NN inside each "
        "partition; any batch size) or a torch.export program (.pt2). --check runs the ONNX file "
        "in ONNX Runtime beside PyTorch on real images.",
    )
    parser.add_argument(
        "model", nargs="?", help="model name, e.g. cvig_ti (default: the --checkpoint's model)"
    )
    parser.add_argument("--format", choices=("onnx", "pt2"), default="onnx")
    parser.add_argument(
        "--img-size", type=int, help="input size (default: the checkpoint's, else 224)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=1, help="batch of the example traced (default 1)"
    )
    parser.add_argument(
        "--dynamic-batch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ONNX: the graph takes any batch size (default; --no-dynamic-batch fixes it to "
        "--batch-size)",
    )
    parser.add_argument(
        "--inference-form",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="export clustervig.deploy(model): batch norms folded (default; the same function)",
    )
    parser.add_argument(
        "--check",
        nargs="*",
        metavar="IMAGE_OR_DIR",
        help="ONNX: run the file in ONNX Runtime beside the PyTorch model on these images "
        "(files, or folders: a folder with a val/ split uses it), or with no paths on the "
        "digits demo's held-out split; prints the largest logit difference and the top-1 "
        "agreement, exit status 1 if they differ by more than 1e-3 of the logits' scale",
    )
    parser.add_argument("--checkpoint", help="weights to export (default: random weights)")
    _model_args(parser)
    parser.add_argument("--out", help="file to write (default NAME.onnx or NAME.pt2)")
    parser.add_argument("--version", action="version", version=f"clustervig {__version__}")
    args = parser.parse_args(argv)
    from .export import export_onnx, export_program
    from .registry import model_from_checkpoint

    where = "python -m clustervig export"
    try:
        overrides = dict(parse_override(item) for item in args.model_args)
        if args.img_size is not None:
            overrides["img_size"] = args.img_size
        name, model, options = model_from_checkpoint(args.model, overrides, args.checkpoint, where)
        img_size = int(options.get("img_size", 224))
        out = args.out or f"{name}.{args.format}"
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.check is not None:
            if args.format != "onnx":
                raise ValueError("--check runs an ONNX file in ONNX Runtime: use --format onnx")
            import importlib.util

            lacking = [m for m in ("onnxruntime", "timm") if importlib.util.find_spec(m) is None]
            if lacking:
                raise ValueError(
                    f"--check needs {' and '.join(lacking)} (ONNX Runtime runs the file, timm's "
                    "evaluation transform prepares the images): pip install 'clustervig[test]'"
                )
        original = model.eval()
        if args.inference_form:
            from .inference import deploy

            model = deploy(model)
        try:
            if args.format == "onnx":
                path = export_onnx(
                    model, out, img_size, args.batch_size, dynamic_batch=args.dynamic_batch
                )
            else:
                path = export_program(model, out, img_size=img_size, batch=args.batch_size)
        except OSError as err:
            raise ValueError(f"--out: cannot write {out} ({err.strerror or err})") from None
        batch = "any" if args.format == "onnx" and args.dynamic_batch else args.batch_size
        print(f"wrote {path} ({args.format}, input ({batch}, 3, {img_size}, {img_size}))")
        if args.check is None:
            return 0
        from .export import check_images, check_onnx

        images, what = check_images(args.check, img_size)
        print(f"checking {path} in ONNX Runtime against PyTorch on {what} ...", flush=True)
        result = check_onnx(original, path, images)  # against the model as trained
    except ValueError as err:
        return user_error(where, err)
    print(
        f"ONNX Runtime vs PyTorch: largest logit difference {result['max_abs_diff']:.2e} "
        f"({result['max_rel_diff']:.2e} of the logits' scale), top-1 equal on "
        f"{result['top1_agree']}/{result['images']} images"
    )
    if not result["passed"]:
        print(
            f"check FAILED (tolerance {result['tolerance']:g} of the scale, every top-1 equal); "
            f"differing images: {result['top1_disagree_indices']}",
            file=sys.stderr,
        )
        return 1
    print("check passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["convert"]:
        return _convert(argv[1:])
    if argv[:1] == ["export"]:
        return _export(argv[1:])
    if argv[:1] in (["train"], ["validate"]):  # clustervig train ... = python -m clustervig.train
        from importlib import import_module

        return import_module(f"clustervig.{argv[0]}").main(argv[1:])
    args = _parse(argv)
    if (code := environment_error("python -m clustervig")) is not None:
        return code
    header = (
        f"{'model':10s} {'params M':>9s} {'paper':>7s} {'GMACs':>7s} {'target':>7s} "
        f"{'paper':>6s} {'forward (CPU, warm)':>26s}"
    )
    print(header)
    print("-" * len(header))
    failures = 0
    for name in args.models:
        torch.manual_seed(args.seed)
        model = create_model(name).eval()
        params = count_parameters(model) / 1e6
        gmacs = count_gmacs(model)
        check = "skipped"
        if not args.no_forward:
            x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
            try:
                with torch.no_grad():
                    out = model(x)  # the check, and the warm-up of the timing below
                    times = []
                    for _ in range(3):
                        start = time.perf_counter()
                        model(x)
                        times.append(time.perf_counter() - start)
            except ValueError as err:  # the user's sizes: say so, no traceback
                return user_error("python -m clustervig", err)
            elapsed = sorted(times)[1]
            ok = out.shape == (args.batch_size, 1000) and bool(torch.isfinite(out).all())
            failures += not ok
            check = f"{'ok' if ok else 'FAILED'} {tuple(out.shape)} {elapsed:6.2f}s"
        print(
            f"{DISPLAY_NAMES[name]:10s} {params:9.2f} {_fmt(PAPER_PARAMS_M.get(name), '7.1f')} "
            f"{gmacs:7.2f} {_fmt(COUNTER_GMACS.get(name), '7.2f')} "
            f"{_fmt(PAPER_GMACS.get(name), '6.1f')} {check:>26s}",
            flush=True,
        )
    print(
        "\nGMACs: FlopCounterMode at 224x224 (k-means and in-partition k-NN counted from the work "
        "they did);\n'target' is the authors' architecture counted the same way, 'paper' the "
        "published column\n(counted with a tool that skips nn.Linear). Forward: median of 3 "
        "calls after a warm-up one. See README.md."
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
