"""Shared pieces of the benchmarks: device facts, timing, result files."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FIGURES_DIR = Path(__file__).resolve().parent / "figures"


def best_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "device"


def device_slug(device: torch.device) -> str:
    if device.type == "cuda":
        return slug(torch.cuda.get_device_name(device))
    return f"cpu-{torch.get_num_threads()}t"


def environment(device: torch.device) -> dict:
    """What a result file records about where it was measured."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # pragma: no cover
        triton_version = None
    info = {
        "device": device_name(device),
        "device_type": device.type,
        "device_slug": device_slug(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    return info


@dataclass
class Timing:
    """Seconds per call over the timed repetitions."""

    median: float
    p10: float
    p90: float
    repeats: int

    def as_dict(self) -> dict:
        return {
            "median_ms": self.median * 1e3,
            "p10_ms": self.p10 * 1e3,
            "p90_ms": self.p90 * 1e3,
            "repeats": self.repeats,
        }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def time_call(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 3,
    repeats: int = 20,
    min_seconds: float = 0.0,
) -> Timing:
    """Median and spread of ``fn()``'s duration, warm-up excluded.

    CUDA: each call is bracketed by CUDA events (device time, no host sync inside the region).
    CPU: ``time.perf_counter`` around each call. At least ``repeats`` calls, more until
    ``min_seconds`` have been spent timing.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    spent = 0.0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        while len(samples) < repeats or spent < min_seconds:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
            spent += samples[-1]
    else:
        while len(samples) < repeats or spent < min_seconds:
            begin = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - begin)
            spent += samples[-1]
    return Timing(
        statistics.median(samples), _quantile(samples, 0.1), _quantile(samples, 0.9), len(samples)
    )


def measure_peaks(device: torch.device) -> dict | None:
    """Measured ceilings of a CUDA device: device-to-device copy GB/s (read + write) and bf16 /
    fp32 matrix-product TFLOP/s, on random data. None on the CPU."""
    if device.type != "cuda":
        return None
    n = 1 << 28  # 256 Mi floats = 1 GiB
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    copy = time_call(lambda: dst.copy_(src), device, warmup=3, repeats=10)
    src = dst = None  # free the 2 GiB before the matrix products
    peaks = {"copy_gbps": 2 * n * 4 / copy.median / 1e9}
    size = 8192
    for name, dtype in (("bf16_tflops", torch.bfloat16), ("fp32_tflops", torch.float32)):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        mm = time_call(lambda: a @ b, device, warmup=3, repeats=10)
        peaks[name] = 2 * size**3 / mm.median / 1e12
    torch.cuda.empty_cache()
    return peaks


def today() -> str:
    return _dt.date.today().isoformat()


def result_path(kind: str, device: torch.device, directory: Path | None = None) -> Path:
    """``reports/results/<device-slug>-<date>.json`` for the model benchmark,
    ``<kind>-<device-slug>-<date>.json`` for the others (``micro``, ``scaling``)."""
    directory = directory or RESULTS_DIR
    prefix = "" if kind == "models" else f"{kind}-"
    return directory / f"{prefix}{device_slug(device)}-{today()}.json"


def write_json(path: Path, data: dict) -> Path:
    """Write atomically (temp file + rename): a crash never leaves half a result file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def progress(message: str) -> None:
    print(message, flush=True)
