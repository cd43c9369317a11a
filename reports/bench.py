"""End-to-end inference benchmark: models x batch sizes x compile modes -> one result document.

Every model runs the same path: ``eval()``, ``torch.no_grad()``, this project's models (ClusterViG
and the ViG baselines alike) in their inference form (:func:`clustervig.deploy`; timm's as timm
builds them), optionally ``torch.compile`` (fullgraph) and, on a GPU, autocast to bf16/fp16.
Models are timed interleaved, one batch size at a time. Warm-up calls (which include
compilation) are excluded; each row records the median and p10/p90 of the timed calls,
throughput, peak memory (device allocator, or the process's peak RSS on a CPU), the load average
around it, whether the series looks like noise and why, and ``"oom"`` or ``"failed"`` instead of
a crash.
"""

from __future__ import annotations

import contextlib
import gc
import time
import traceback
from collections.abc import Callable

import torch

from clustervig import DISPLAY_NAMES, canonical_name, count_parameters, create_model, deploy
from clustervig.conventions import BackboneConventions

from .common import (
    PeakMemory,
    Timing,
    environment,
    load_average,
    noise_verdict,
    progress,
    time_once,
)
from .schema import SCHEMA_VERSION

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
#: CUDA graphs (``reduce-overhead``) pay off where launches dominate: small batches. Larger ones
#: are not measured in that mode (its graphs would only add capture memory there).
REDUCE_OVERHEAD_MAX_BATCH = 16


def batches_for(mode: str, batch_sizes: list[int]) -> list[int]:
    """The batch sizes measured in compile ``mode``."""
    if mode == "reduce-overhead":
        return [b for b in batch_sizes if b <= REDUCE_OVERHEAD_MAX_BATCH]
    return list(batch_sizes)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: Optional comparisons (paper Fig. 5), built with timm when it is installed.
TIMM_MODELS = {
    "efficientformer_l1": "EfficientFormer-L1",
    "efficientformer_l3": "EfficientFormer-L3",
    "efficientformer_l7": "EfficientFormer-L7",
}

DEFAULT_MODELS = {
    "cuda": [
        "cvig_ti",
        "cvig_s",
        "cvig_b",
        "cvig_b_hr",
        "pvig_ti",
        "pvig_s",
        "pvig_b",
        "ivig_ti",
        "ivig_s",
        "ivig_b",
    ],
    "cpu": ["cvig_ti", "cvig_s", "pvig_ti", "pvig_s", "ivig_ti"],
}
DEFAULT_BATCH_SIZES = {"cuda": [1, 8, 16, 32, 64, 128, 256, 512], "cpu": [1, 2, 4, 8, 16]}


def timm_available() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_model_name(name: str) -> str:
    """Registry key of a project model, or ``timm:<name>`` for a timm comparison model."""
    key = name.strip()
    if key.lower() in TIMM_MODELS or key.lower().startswith("timm:"):
        key = key.lower().removeprefix("timm:")
        if not timm_available():
            raise ValueError(
                f"model {name!r} needs timm, which is not installed (pip install timm)"
            )
        return f"timm:{key}"
    return canonical_name(key)


def display_name(key: str) -> str:
    if key.startswith("timm:"):
        return TIMM_MODELS.get(key[5:], key[5:])
    return DISPLAY_NAMES[key]


def build_model(key: str) -> torch.nn.Module:
    if key.startswith("timm:"):
        import timm

        return timm.create_model(key[5:], pretrained=False)
    model = create_model(key)
    model.validate_inputs = False  # the NaN check syncs with the device every call
    return model


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


SKIPPED_OOM = {"status": "oom", "error": "skipped: a smaller batch ran out of memory"}
#: A row the run's time cap (``deadline``) left unmeasured.
SKIPPED_TIME = {"status": "skipped", "error": "skipped: no time left (the run's time cap)"}


def _past(deadline: float | None) -> bool:
    """Whether ``deadline`` (a ``time.monotonic()`` value) has passed."""
    return deadline is not None and time.monotonic() >= deadline


def _out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


def _failure(err: BaseException) -> dict:
    if _out_of_memory(err):
        return {"status": "oom", "error": str(err).splitlines()[0][:300] or "out of memory"}
    return {"status": "failed", "error": _short_error(err)}


def _build_runner(key: str, device: torch.device, compile_mode: str):
    model = build_model(key).eval().to(device)
    params = round(count_parameters(model) / 1e6, 2)
    if isinstance(model, BackboneConventions):
        # Ours (ClusterViG and the ViG baselines alike) in the inference form: batch norms
        # folded, channels-last maps, fused CPU convolutions; the same function. timm's models
        # run as timm builds them.
        model = deploy(model)
    if compile_mode == "none":
        return model, params
    mode = None if compile_mode == "default" else compile_mode
    return torch.compile(model, mode=mode, fullgraph=not key.startswith("timm:")), params


def _measure_batch(
    runners: dict[str, object],
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    img_size: int,
    warmup: int,
    repeats: int,
    min_seconds: float,
    deadline: float | None = None,
) -> dict[str, dict]:
    """One batch size, every model: warm-up (and peak memory) per model, then ``repeats``
    rounds that each time every model once, in an order rotated every round, so that a change
    in the machine's load hits all models alike. Past ``deadline`` no model's warm-up (which
    compiles) and no further round starts (one runs; the rows say how many did). Returns a row
    update per model."""
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    calls: dict[str, object] = {}
    results: dict[str, dict] = {}
    for key, runner in runners.items():
        if _past(deadline):  # warm-ups compile: a model not reached in time is not started
            results[key] = dict(SKIPPED_TIME)
            continue

        def forward(runner=runner):
            with torch.no_grad(), _autocast(device, dtype):
                return runner(x)

        try:
            with PeakMemory(device) as peak:
                forward()
            for _ in range(max(0, warmup - 1)):
                forward()
        except Exception as err:  # a model that cannot run this batch fails its row only
            results[key] = _failure(err)
            _release(device)
            continue
        calls[key] = forward
        results[key] = {"peak_memory_mib": peak.mib}
    samples: dict[str, list[float]] = {key: [] for key in calls}
    load_before = load_average()
    order = list(calls)
    rounds = 0
    while order and (rounds < repeats or min(sum(v) for v in samples.values()) < min_seconds):
        if rounds and _past(deadline):
            break
        for key in order[rounds % len(order) :] + order[: rounds % len(order)]:
            try:
                samples[key].append(time_once(calls[key], device))
            except Exception as err:
                results[key] = _failure(err)
                order.remove(key)
                samples.pop(key)
        rounds += 1
    load_after = load_average()
    threads = torch.get_num_threads()
    for key, times in samples.items():
        timing = Timing.of(times)
        noise = noise_verdict(
            timing,
            threads,
            load_before if device.type == "cpu" else None,
            load_after if device.type == "cpu" else None,
        )
        results[key].update(
            status="ok",
            error=None,
            **timing.as_dict(),
            throughput=batch / timing.median,
            noisy=noise is not None,
            noise=noise,
            load_before=load_before,
            load_after=load_after,
        )
    return results


def _short_error(err: BaseException) -> str:
    last = traceback.format_exception_only(type(err), err)[-1].strip()
    return last[:500]


def run(
    device: torch.device,
    models: list[str],
    batch_sizes: list[int],
    dtype: torch.dtype = torch.float32,
    compile_modes: tuple[str, ...] = ("none",),
    img_size: int = 224,
    warmup: int = 3,
    repeats: int = 20,
    min_seconds: float = 0.0,
    on_update: Callable[[dict], None] | None = None,
    deadline: float | None = None,
) -> dict:
    """Benchmark ``models`` on ``device``; returns the result document (``reports/schema.py``).

    Models are measured side by side (interleaved rounds, one batch size at a time), never one
    after the other. ``on_update(doc)`` sees the document after every row (with
    ``"complete": False`` until the end), so an interrupted run keeps what it measured. Past
    ``deadline`` (a ``time.monotonic()`` value) nothing new is built or measured: the rows left
    say ``skipped`` and the document ``"complete": False``.
    """
    keys = [resolve_model_name(m) for m in models]
    rows: list[dict] = []
    doc = {
        "kind": "models",
        "schema": SCHEMA_VERSION,
        "environment": environment(device),
        "settings": {
            "dtype": str(dtype).replace("torch.", ""),
            "compile_modes": list(compile_modes),
            "img_size": img_size,
            "warmup": warmup,
            "repeats": repeats,
            "batch_sizes": batch_sizes,
            "reduce_overhead_max_batch": REDUCE_OVERHEAD_MAX_BATCH,
            "interleaved": True,
        },
        "complete": False,
        "rows": rows,
    }
    rank = {key: i for i, key in enumerate(keys)}
    timed_out = False

    def add(row: dict) -> None:
        rows.append(row)
        rows.sort(key=lambda r: (r["compile"], rank[r["model"]], r["batch_size"]))
        if on_update is not None:
            on_update(doc)

    for mode in compile_modes:
        if _past(deadline):
            timed_out = True
            for key in keys:
                for b in batches_for(mode, batch_sizes):
                    add(dict(_base(key, mode, dtype, img_size), batch_size=b, **SKIPPED_TIME))
            continue
        progress(f"[run] compile={mode}: building {', '.join(display_name(k) for k in keys)}")
        torch.manual_seed(0)
        runners, base, failed = {}, {}, set()
        for key in keys:
            base[key] = _base(key, mode, dtype, img_size)
            try:
                runners[key], base[key]["params_m"] = _build_runner(key, device, mode)
            except Exception as err:  # a model that cannot be built fails its rows, not the run
                failed.add(key)
                for b in batches_for(mode, batch_sizes):
                    add(dict(base[key], batch_size=b, **_failure(err)))
        out_of_memory: set[str] = set()
        for batch in batches_for(mode, batch_sizes):
            if _past(deadline):
                timed_out = True
                for key in runners:
                    add(dict(base[key], batch_size=batch, **SKIPPED_TIME))
                continue
            live = {k: r for k, r in runners.items() if k not in out_of_memory}
            measured = _measure_batch(
                live, batch, device, dtype, img_size, warmup, repeats, min_seconds, deadline
            )
            for key in runners:
                if key in out_of_memory:
                    update = dict(SKIPPED_OOM)
                else:
                    update = measured[key]
                    if update["status"] == "oom":
                        out_of_memory.add(key)
                row = dict(base[key], batch_size=batch, **update)
                add(row)
                _report(row, mode, batch)
        runners = None
        _release(device)
    doc["complete"] = not timed_out
    return doc


def _base(key: str, mode: str, dtype: torch.dtype, img_size: int) -> dict:
    return {
        "model": key,
        "display": display_name(key),
        "form": "timm" if key.startswith("timm:") else "inference",  # see _build_runner
        "compile": mode,
        "dtype": str(dtype).replace("torch.", ""),
        "img_size": img_size,
    }


def _report(row: dict, mode: str, batch: int) -> None:
    if row["status"] == "ok":
        flag = f"  NOISY: {row['noise']}" if row.get("noisy") else ""
        progress(
            f"[run] {row['display']:10s} {mode:15s} b={batch:<4d} {row['median_ms']:9.2f} ms "
            f"(p10-p90 {row['p10_ms']:.1f}-{row['p90_ms']:.1f})  {row['throughput']:9.1f} img/s"
            f"{flag}"
        )
    else:
        progress(
            f"[run] {row['display']:10s} {mode:15s} b={batch:<4d} "
            f"{row['status'].upper()}: {row['error']}"
        )
