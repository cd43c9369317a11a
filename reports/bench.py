"""End-to-end inference benchmark: models x batch sizes x compile modes -> one result document.

Every model runs the same path: ``eval()``, ``torch.no_grad()``, optionally ``torch.compile``
(fullgraph) and, on a GPU, autocast to bf16/fp16. Warm-up calls (which include compilation) are
excluded; each row records the median and spread of the timed calls, throughput, peak device
memory, and ``"oom"`` or ``"failed"`` instead of a crash.
"""

from __future__ import annotations

import contextlib
import gc
import traceback

import torch

from clustervig import DISPLAY_NAMES, canonical_name, count_parameters, create_model

from .common import environment, progress, time_call
from .schema import SCHEMA_VERSION

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
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


def benchmark_model(
    key: str,
    device: torch.device,
    batch_sizes: list[int],
    dtype: torch.dtype,
    compile_mode: str,
    img_size: int = 224,
    warmup: int = 3,
    repeats: int = 20,
    min_seconds: float = 0.0,
) -> list[dict]:
    """Rows for one model and compile mode over all batch sizes."""
    rows: list[dict] = []
    base = {
        "model": key,
        "display": display_name(key),
        "compile": compile_mode,
        "dtype": str(dtype).replace("torch.", ""),
        "img_size": img_size,
    }
    try:
        model = build_model(key).eval().to(device)
        base["params_m"] = round(count_parameters(model) / 1e6, 2)
        runner = (
            model
            if compile_mode == "none"
            else torch.compile(
                model,
                mode=None if compile_mode == "default" else compile_mode,
                fullgraph=not key.startswith("timm:"),
            )
        )
    except Exception as err:  # a model that cannot be built fails its rows, not the run
        return [
            dict(base, batch_size=b, status="failed", error=f"{type(err).__name__}: {err}")
            for b in batch_sizes
        ]
    oom_seen = False
    for batch in batch_sizes:
        row = dict(base, batch_size=batch)
        if oom_seen:  # larger batches cannot fit either
            rows.append(dict(row, status="oom", error="skipped: a smaller batch ran out of memory"))
            continue
        x = None
        try:
            x = torch.randn(batch, 3, img_size, img_size, device=device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

            def forward():
                with torch.no_grad(), _autocast(device, dtype):
                    return runner(x)

            timing = time_call(
                forward, device, warmup=warmup, repeats=repeats, min_seconds=min_seconds
            )
            row.update(
                status="ok",
                error=None,
                **timing.as_dict(),
                throughput=batch / timing.median,
                peak_memory_mib=(
                    torch.cuda.max_memory_allocated(device) / 2**20
                    if device.type == "cuda"
                    else None
                ),
            )
        except torch.cuda.OutOfMemoryError:
            oom_seen = True
            row.update(status="oom", error="CUDA out of memory")
        except RuntimeError as err:
            if "out of memory" in str(err).lower():
                oom_seen = True
                row.update(status="oom", error=str(err).splitlines()[0][:300])
            else:
                row.update(status="failed", error=_short_error(err))
        except Exception as err:
            row.update(status="failed", error=_short_error(err))
        finally:
            x = None
            _release(device)
        rows.append(row)
        if row["status"] == "ok":
            progress(
                f"[run] {row['display']:10s} {compile_mode:15s} b={batch:<4d} "
                f"{row['median_ms']:9.2f} ms  {row['throughput']:9.1f} img/s"
            )
        else:
            progress(
                f"[run] {row['display']:10s} {compile_mode:15s} b={batch:<4d} "
                f"{row['status'].upper()}: {row['error']}"
            )
    runner = model = None
    _release(device)
    return rows


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
) -> dict:
    """Benchmark ``models`` on ``device``; returns the result document (``reports/schema.py``)."""
    keys = [resolve_model_name(m) for m in models]
    rows: list[dict] = []
    total = len(keys) * len(compile_modes)
    for i, (mode, key) in enumerate([(m, k) for m in compile_modes for k in keys], start=1):
        progress(f"[run] ({i}/{total}) {display_name(key)} compile={mode} on {device}")
        torch.manual_seed(0)
        rows += benchmark_model(
            key, device, batch_sizes, dtype, mode, img_size, warmup, repeats, min_seconds
        )
    return {
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
        },
        "rows": rows,
    }
