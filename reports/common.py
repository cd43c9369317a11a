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

#: The committed results and figures of this repository (pass them explicitly to write there).
PACKAGE_RESULTS_DIR = Path(__file__).resolve().parent / "results"
PACKAGE_FIGURES_DIR = Path(__file__).resolve().parent / "figures"
#: Where a run writes by default: the current directory, never the installed package.
RESULTS_DIR = Path("clustervig-reports") / "results"
FIGURES_DIR = Path("clustervig-reports") / "figures"
#: A series whose p10-p90 spread exceeds this share of its median is flagged as noise.
NOISY_SPREAD = 0.25


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


def set_cpu_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op threads (default: what torch chose) and return the count."""
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def load_average() -> float | None:
    """The 1-minute load average of the machine (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeakMemory:
    """Peak memory of the code in a ``with`` block, in MiB above what was in use before it.

    CUDA: the allocator's peak. CPU: the process's peak resident set (Linux ``VmHWM``, reset
    through ``/proc/self/clear_refs`` first); ``mib`` stays None where that is unavailable.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib: float | None = None
        self._base: float | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            try:
                with open("/proc/self/clear_refs", "w") as handle:
                    handle.write("5")  # resets VmHWM to the current RSS
                rss = _proc_status_kib("VmRSS")
                self._base = rss / 1024 if rss is not None else None
            except OSError:
                self._base = None
        return self

    def __exit__(self, *exc) -> None:
        if self._base is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            hwm = _proc_status_kib("VmHWM")
            peak = hwm / 1024 if hwm is not None else None
        if peak is not None:
            self.mib = round(max(0.0, peak - self._base), 1)


def noise_verdict(
    timing: Timing, threads: int, load_before: float | None, load_after: float | None
) -> str | None:
    """Why a CPU measurement cannot be trusted (None if nothing says so): a p10-p90 spread
    above ``NOISY_SPREAD`` of the median, or a machine busier than the threads it was given."""
    reasons = []
    if timing.median > 0 and (timing.p90 - timing.p10) / timing.median > NOISY_SPREAD:
        reasons.append(
            f"p10-p90 spread {100 * (timing.p90 - timing.p10) / timing.median:.0f}% of the median"
        )
    cores = os.cpu_count() or threads
    loads = [v for v in (load_before, load_after) if v is not None]
    if loads and max(loads) > cores + 0.5:
        reasons.append(f"load average {max(loads):.1f} on {cores} cores")
    return "; ".join(reasons) or None


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
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
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

    @classmethod
    def of(cls, samples: list[float]) -> Timing:
        """Median and p10 / p90 of ``samples`` (seconds), over their count."""
        return cls(
            statistics.median(samples), quantile(samples, 0.1), quantile(samples, 0.9), len(samples)
        )

    def as_dict(self) -> dict:
        return {
            "median_ms": self.median * 1e3,
            "p10_ms": self.p10 * 1e3,
            "p90_ms": self.p90 * 1e3,
            "repeats": self.repeats,
        }


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call: CUDA events around it on a GPU (device time, no host sync inside
    the region), ``perf_counter`` on the CPU."""
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


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
        samples.append(time_once(fn, device))
        spent += samples[-1]
    return Timing.of(samples)


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
