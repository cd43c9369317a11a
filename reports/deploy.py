"""``python -m reports deploy``: CPU deployment speed beside the models users would pick instead.

A user choosing a ~80% ImageNet model for a CPU or an ONNX Runtime deployment compares
ClusterViG with EfficientFormer-L1, EfficientFormerV2-S2, LeViT-192 (the paper's Table IV puts
them beside CViG-Ti), ResNet-18 and DeiT-Ti. This benchmark runs them as users get them, side by
side in one process:

- this project's models (default CViG-Ti and PViG-Ti) in four forms: ``eager`` (the eval-mode
  model), ``inference`` (:func:`clustervig.deploy`: batch norms folded, channels-last, fused
  convolutions), ``compiled`` (``torch.compile`` of the inference form) and ``onnx`` (the
  inference form exported by :func:`clustervig.export.export_onnx`, in ONNX Runtime);
- timm's models as timm builds them, ``eager`` and ``onnx`` (``torch.onnx.export``, opset 17,
  dynamic batch).

Every runner is warmed up first; then the timed calls are interleaved (one call of each runner
in turn, ``repeats`` rounds), so a change of machine load hits all of them alike. ONNX Runtime
runs with the same thread count and without spinning idle threads (the counterpart of
``OMP_WAIT_POLICY=PASSIVE`` for PyTorch: a spinning pool would steal the CPU from the runner
timed next). Rows record median, p10/p90 and a noise verdict. Random weights: speed does not
depend on them, except through the k-means iterations ours run (trained weights may converge
in fewer or more passes).
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from clustervig import create_model, deploy
from clustervig.paper import PUBLISHED_TOP1

from .common import (
    Timing,
    environment,
    load_average,
    noise_verdict,
    progress,
)
from .schema import SCHEMA_VERSION

__all__ = ["DEFAULT_MODELS", "DEFAULT_PEERS", "FORMS", "onnx_parity", "parity_summary", "run"]

DEFAULT_MODELS = ("cvig_ti", "pvig_ti")
DEFAULT_PEERS = (
    "efficientformer_l1",
    "efficientformerv2_s2",
    "levit_192",
    "resnet18",
    "deit_tiny_patch16_224",
)
#: Forms of this project's models (timm's run eager, and in ONNX Runtime when ours do).
FORMS = ("eager", "inference", "compiled", "onnx")
DISPLAY = {
    "cvig_ti": "CViG-Ti",
    "cvig_s": "CViG-S",
    "pvig_ti": "PViG-Ti",
    "pvig_s": "PViG-S",
    "ivig_ti": "IViG-Ti",
    "efficientformer_l1": "EfficientFormer-L1",
    "efficientformerv2_s2": "EfficientFormerV2-S2",
    "levit_192": "LeViT-192",
    "resnet18": "ResNet-18",
    "deit_tiny_patch16_224": "DeiT-Ti",
}
ONNX_OPSET = 17


def _ort_session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _export_peer(model: torch.nn.Module, path: Path) -> Path:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 224, 224),),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            opset_version=ONNX_OPSET,
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return path


def _build(name: str, form: str, peer: bool, threads: int, workdir: Path):
    """A callable ``run(x)`` for one (model, form): PyTorch forms take a tensor, ONNX Runtime
    ones the same tensor as a NumPy array."""
    if peer:
        import timm

        model = timm.create_model(name, pretrained=False).eval()
    else:
        model = create_model(name).eval()
    if form == "eager":
        return lambda x: model(x)
    if not peer:
        model = deploy(model)
    if form == "inference":
        return lambda x: model(x)
    if form == "compiled":
        compiled = torch.compile(model)
        return lambda x: compiled(x)
    path = workdir / f"{name}.onnx"
    if peer:
        _export_peer(model, path)
    else:
        from clustervig.export import export_onnx

        export_onnx(model, path, batch=1, dynamic_batch=True)
    session = _ort_session(path, threads)
    return lambda x: session.run(None, {"images": x.numpy()})


def run(
    models: list[str] | None = None,
    peers: list[str] | None = None,
    batch_sizes: list[int] | None = None,
    forms: list[str] | None = None,
    *,
    threads: int,
    warmup: int = 2,
    repeats: int = 7,
    on_update: Callable[[dict], None] | None = None,
    deadline: float | None = None,
) -> dict:
    """Benchmark every (model, form) at every batch size, interleaved (module docstring).

    Returns a ``kind="deploy"`` result document; ``on_update(doc)`` after every batch size.
    A runner that cannot be built (an export that fails) or fails while timed becomes a
    ``failed`` row with the reason; past ``deadline`` (``time.monotonic``) the remaining rows
    are ``skipped``.
    """
    models = list(DEFAULT_MODELS if models is None else models)
    peers = list(DEFAULT_PEERS if peers is None else peers)
    batch_sizes = list(batch_sizes or [1, 8])
    forms = list(forms or FORMS)
    torch.set_num_threads(threads)
    doc = {
        "schema": SCHEMA_VERSION,
        "kind": "deploy",
        "environment": environment(torch.device("cpu")),
        "settings": {
            "threads": threads,
            "warmup": warmup,
            "repeats": repeats,
            "img_size": 224,
            "dtype": "float32",
            "onnxruntime": _ort_version(),
            "ort_spinning": False,
            "interleaved": True,
        },
        "rows": [],
        "complete": False,
    }
    entries = [(m, f, False) for m in models for f in forms]
    # timm's models always run eager (the reference of every ratio), and in ONNX Runtime when
    # ours do.
    peer_forms = ["eager"] + (["onnx"] if "onnx" in forms else [])
    entries += [(p, f, True) for p in peers for f in peer_forms]
    with tempfile.TemporaryDirectory(prefix="clustervig-deploy-") as tmp:
        runners: dict[tuple[str, str], Callable | str] = {}
        for name, form, peer in entries:
            if deadline is not None and time.monotonic() > deadline:
                runners[(name, form)] = "skipped"
                continue
            progress(f"[deploy] building {DISPLAY.get(name, name)} ({form})")
            try:
                with torch.no_grad():
                    runners[(name, form)] = _build(name, form, peer, threads, Path(tmp))
            except Exception as err:  # an export or build failure is a row, not the end
                runners[(name, form)] = f"failed: {type(err).__name__}: {str(err)[:200]}"
        for batch in batch_sizes:
            _measure_batch(doc, entries, runners, batch, threads, warmup, repeats, deadline)
            if on_update is not None:
                on_update(doc)
    doc["complete"] = all(r["status"] != "skipped" for r in doc["rows"])
    return doc


def _ort_version() -> str | None:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except ImportError:
        return None


def _measure_batch(doc, entries, runners, batch, threads, warmup, repeats, deadline) -> None:
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    live: dict[tuple[str, str], Callable] = {}
    failed: dict[tuple[str, str], str] = {}
    with torch.inference_mode():
        for name, form, _ in entries:
            runner = runners[(name, form)]
            if isinstance(runner, str):
                failed[(name, form)] = runner
                continue
            if deadline is not None and time.monotonic() > deadline:
                failed[(name, form)] = "skipped"
                continue
            progress(f"[deploy] b={batch}: warming up {DISPLAY.get(name, name)} ({form})")
            try:
                for _ in range(warmup):
                    runner(x)
                live[(name, form)] = runner
            except Exception as err:
                failed[(name, form)] = f"failed: {type(err).__name__}: {str(err)[:200]}"
        samples: dict[tuple[str, str], list[float]] = {key: [] for key in live}
        load_before = load_average()
        for round_ in range(repeats):
            if deadline is not None and time.monotonic() > deadline and round_ >= 3:
                break  # enough rounds for a median; the rest of the cap is not ours
            for key, runner in live.items():
                begin = time.perf_counter()
                runner(x)
                samples[key].append(time.perf_counter() - begin)
        load_after = load_average()
    progress(f"[deploy] b={batch}: {repeats} interleaved rounds done")
    for name, form, peer in entries:
        row = {
            "model": name,
            "display": DISPLAY.get(name, name),
            "source": "timm" if peer else "clustervig",
            "form": form,
            "runtime": "onnxruntime" if form == "onnx" else "pytorch",
            "batch_size": batch,
            "top1": PUBLISHED_TOP1.get(name, (None, None))[0],
            "top1_source": PUBLISHED_TOP1.get(name, (None, None))[1],
        }
        key = (name, form)
        if key in failed:
            status = failed[key]
            row["status"] = "skipped" if status == "skipped" else "failed"
            if status != "skipped":
                row["error"] = status.removeprefix("failed: ")
        else:
            timing = Timing.of(samples[key])
            row.update(status="ok", **timing.as_dict())
            row["throughput"] = batch / timing.median
            noise = noise_verdict(timing, threads, load_before, load_after)
            row.update(noisy=noise is not None, noise=noise)
        doc["rows"].append(row)


def omp_policy_note() -> str | None:
    """A warning when ``OMP_WAIT_POLICY`` is not PASSIVE (spinning OpenMP threads of one
    runner steal the CPU from the next)."""
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        return (
            "OMP_WAIT_POLICY is not PASSIVE: set it before Python starts "
            "(OMP_WAIT_POLICY=PASSIVE python -m reports deploy) for comparable timings"
        )
    return None


def calibrated(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """``name`` (with config ``overrides``) with random weights (``seed``) and batch-norm
    statistics re-estimated on four random 224 x 224 images (the training's
    ``recalibrate_batch_norm``): eval activations of a sane scale, as a
    trained model has, instead of random init's exploding ones (logits of 1e4, every decision a
    near-tie). In eval mode."""
    from clustervig.train import recalibrate_batch_norm

    torch.manual_seed(seed)
    model = create_model(name, **overrides)
    batch = (torch.randn(4, 3, 224, 224), torch.zeros(4), 0)  # (images, targets, skipped)
    recalibrate_batch_norm(model, [batch], torch.device("cpu"), None, batches=1)
    return model.eval()


def onnx_parity(models: list[str], seeds: list[int], images: int = 4, *, threads: int = 2) -> dict:
    """ONNX Runtime against PyTorch at full depth: per model and seed, the exported inference
    form on ``images`` images drawn independently of the export's example, beside PyTorch in
    float32 (the reference) and in float64. A row per image: the largest logit difference of
    ONNX Runtime and of float64 PyTorch from float32 PyTorch, relative to the image's logit
    scale, and whether their top-1 equals it. Where float64 moves the answer as far as ONNX
    Runtime does, the difference is a near-tie decided by rounding, not an op computing
    something else."""
    import numpy as np

    from clustervig.export import export_onnx

    torch.set_num_threads(threads)
    doc = {
        "schema": SCHEMA_VERSION,
        "kind": "parity",
        "environment": environment(torch.device("cpu")),
        "settings": {"threads": threads, "images": images, "onnxruntime": _ort_version()},
        "rows": [],
        "complete": True,
    }
    with tempfile.TemporaryDirectory(prefix="clustervig-parity-") as tmp:
        for name in models:
            for seed in seeds:
                progress(f"[parity] {DISPLAY.get(name, name)} seed {seed}")
                model = calibrated(name, seed)
                path = export_onnx(deploy(model), Path(tmp) / "m.onnx")
                session = _ort_session(path, threads)
                gen = torch.Generator().manual_seed(10_000 + seed)
                x = torch.randn(images, 3, 224, 224, generator=gen)
                with torch.no_grad():
                    want = model(x)
                    exact = model.double()(x.double())
                got = torch.from_numpy(np.asarray(session.run(None, {"images": x.numpy()})[0]))
                scale = want.abs().amax(1)
                ort = (got - want).abs().amax(1) / scale
                f64 = (exact - want.double()).abs().amax(1) / scale
                for i in range(images):
                    doc["rows"].append(
                        {
                            "model": name,
                            "seed": seed,
                            "image": i,
                            "batch_size": images,
                            "status": "ok",
                            "ort_rel_diff": float(ort[i]),
                            "ort_top1_equal": bool(got[i].argmax() == want[i].argmax()),
                            "float64_rel_diff": float(f64[i]),
                            "float64_top1_equal": bool(exact[i].argmax() == want[i].argmax()),
                        }
                    )
    return doc


def parity_summary(doc: dict, tolerance: float = 1e-3) -> str:
    """Per model: images within ``tolerance`` of the scale with equal top-1, for ONNX Runtime
    and for float64 PyTorch, each against float32 PyTorch."""
    lines = [
        "| model | images | ONNX Runtime within 1e-3, same top-1 | float64 PyTorch within "
        "1e-3, same top-1 | largest ORT difference where float64 agrees |",
        "|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["model"] for r in doc["rows"]):
        rows = [r for r in doc["rows"] if r["model"] == name]
        ort = sum(r["ort_rel_diff"] <= tolerance and r["ort_top1_equal"] for r in rows)
        f64 = sum(r["float64_rel_diff"] <= tolerance and r["float64_top1_equal"] for r in rows)
        agreeing = [r["ort_rel_diff"] for r in rows if r["float64_rel_diff"] <= 1e-4]
        worst = f"{max(agreeing):.1e}" if agreeing else "-"
        lines.append(f"| {DISPLAY.get(name, name)} | {len(rows)} | {ort} | {f64} | {worst} |")
    return "\n".join(lines) + "\n"
