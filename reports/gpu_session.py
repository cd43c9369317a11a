"""A lent GPU's work as one plan for one command: ``.ci/gpu-session [SECONDS]``.

The GPU this project meets is lent rarely and briefly (one command of at most 10 minutes; results
come back only as at most 8 files under ``$OUT``), so the command is a plan of phases in order of
value. Each phase runs in its own process with its own time cap, taken from the budget, writes its
results as every row completes, and cannot stop the next: a phase that fails, hangs or is killed
at its cap leaves what it wrote and the plan goes on. A phase the budget no longer covers is
skipped and says so (``skipped: no time``): no phase ever gets a zero or negative limit.

=============  ==============================================================  =================
phase          what it does (GPU)                                              its file
=============  ==============================================================  =================
environment    GPU, driver, clocks, versions                                   session.json
selfcheck      every kernel at the shapes CViG-Ti and B-dagger launch, bf16;   selfcheck.json
               each verdict recorded as soon as it is decided
headline       CViG-Ti, PViG-Ti, IViG-Ti, timm's EfficientFormer-L1, bf16,     headline.json
               torch.compile default at b = 1, 16, 64, 256 and
               reduce-overhead at b <= 16, interleaved, a row per measurement
kernels        each Triton kernel at CViG-Ti b=256 and B-dagger b=1 beside     kernels.json
               its PyTorch reference and the static report's H200 estimate
               (measured / estimated: the calibration the estimates lack)
models         CViG-S/B/B-dagger, PViG-S/B rows, as time allows                models.json
autotune       the CViG-Ti and B-dagger buckets (the cap checked in a bucket)  tuning-cache.json
tests          the kernel tests on CUDA tensors                                pytest-cuda.log
=============  ==============================================================  =================

Everything any phase prints goes to ``session.log``; ``session.json`` holds the environment and
each phase's status, seconds, cap and file, rewritten after every phase. The tuning cache (the
self-check's verdicts and the tuned configs) lives outside ``$OUT`` while the plan runs and is
copied to ``tuning-cache.json`` after each phase that writes it.

``--rehearse SECONDS`` runs the same phases on a CPU under the Triton interpreter, with tiny
shapes and a small budget, so that the first GPU run is not the plan's first run; it exits 0 only
if every phase left its file (or was skipped for want of time) and the budget held. CI runs it.

This module imports nothing heavy: the plan itself must not spend the budget importing torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .arguments import seconds

ROOT = Path(__file__).resolve().parents[1]
#: Seconds of the budget kept for the plan's own bookkeeping at the end.
RESERVE_S = {"gpu": 8.0, "rehearse": 4.0}
#: Seconds a phase's process gets between SIGTERM and SIGKILL (inside its cap).
KILL_GRACE_S = 3.0
#: A phase's inner work (``--max-seconds``) stops this share of its cap before the cap.
INNER_MARGIN = 0.15
#: At most this many files come back from ``$OUT``.
MAX_FILES = 8
#: The budget may be overrun by at most this many seconds (a phase's kill grace and the
#: bookkeeping after the last phase).
BUDGET_SLACK_S = 5.0

HEADLINE_MODELS = ["cvig_ti", "pvig_ti", "ivig_ti"]
PEER = "timm:efficientformer_l1"  # the paper's peer at 1.3 GMACs
MORE_MODELS = ["cvig_s", "pvig_s", "cvig_b", "pvig_b", "cvig_b_hr"]
#: (model, batch) of the kernel timings, and the micro case of the same shapes.
KERNEL_SHAPES = {"gpu": [("cvig_ti", 256), ("cvig_b_hr", 1)], "rehearse": [("cvig_ti", 1)]}


@dataclasses.dataclass(frozen=True)
class Phase:
    """One step of the plan.

    Attributes:
        name: the phase's name in the log and in ``session.json``.
        file: its artefact under ``$OUT`` (``None``: it reports into ``session.json``).
        share: its share of the budget; deadlines are cumulative, so time a phase leaves
            unused goes to the phases after it.
        min_seconds: the least cap it runs with (taken from the later phases while the budget
            has it left); with less left it is skipped (``skipped: no time``).
        command: ``command(plan, inner_seconds) -> argv`` of its process.
        log_to_file: its output goes to ``file`` instead of ``session.log``.
        copies_cache: the tuning cache is copied to ``tuning-cache.json`` after it.
    """

    name: str
    file: str | None
    share: float
    min_seconds: float
    command: Callable[[Plan, float], list[str]]
    log_to_file: bool = False
    copies_cache: bool = False


@dataclasses.dataclass
class Plan:
    out: Path
    budget: float
    rehearse: bool
    cache_dir: Path
    python: str = sys.executable

    @property
    def kind(self) -> str:
        return "rehearse" if self.rehearse else "gpu"

    def path(self, name: str) -> Path:
        return self.out / name


def _py(plan: Plan, *args: str) -> list[str]:
    return [plan.python, "-m", *args]


def _environment(plan: Plan, inner: float) -> list[str]:
    return [plan.python, "-c", _ENVIRONMENT_SCRIPT]


def _selfcheck(plan: Plan, inner: float) -> list[str]:
    json_out = ["--json", str(plan.path("selfcheck.json"))]
    if plan.rehearse:  # the quick shapes under the interpreter, one dtype
        return _py(plan, "kernels.selfcheck", "--interpret", "--dtypes", "float32", *json_out)
    return _py(plan, "kernels.selfcheck", "--mode", "launch", "--dtypes", "bfloat16", *json_out)


def _run(plan: Plan, inner: float, file: str, models: list[str], gpu_args: list[str]) -> list[str]:
    common = ["--json", str(plan.path(file)), "--max-seconds", f"{inner:.0f}"]
    if plan.rehearse:
        return _py(
            plan, "reports", "run", "--device", "cpu", "--models", *models[:2], "--dtype",
            "float32", "--compile", "none", "--batch-sizes", "1", "--warmup", "1", "--repeats",
            "2", "--threads", "2", *common,
        )  # fmt: skip
    return _py(plan, "reports", "run", "--device", "cuda", "--models", *models, *gpu_args, *common)


def _headline(plan: Plan, inner: float) -> list[str]:
    models = list(HEADLINE_MODELS)
    if not plan.rehearse:
        if _has_module("timm"):
            models.append(PEER)
        else:
            print("[gpu-session] timm is not installed: EfficientFormer-L1 left out", flush=True)
    return _run(
        plan, inner, "headline.json", models,
        ["--dtype", "bfloat16", "--compile", "default", "reduce-overhead",
         "--batch-sizes", "1 16 64 256", "--warmup", "5", "--repeats", "20"],
    )  # fmt: skip


def _models(plan: Plan, inner: float) -> list[str]:
    return _run(
        plan, inner, "models.json", MORE_MODELS,
        ["--dtype", "bfloat16", "--compile", "default", "--batch-sizes", "1 16 64 256",
         "--warmup", "3", "--repeats", "10"],
    )  # fmt: skip


def _kernels(plan: Plan, inner: float) -> list[str]:
    args = ["reports.gpu_session", "--phase", "kernels", "--out", str(plan.out)]
    return _py(plan, *args, "--max-seconds", f"{inner:.0f}", *(["--rehearse", "1"] * plan.rehearse))


def _autotune(plan: Plan, inner: float) -> list[str]:
    minutes = f"{inner / 60:.3f}"
    if plan.rehearse:
        return _py(plan, "autotune", "--interpret", "--ops", "partition", "--max-minutes", minutes)
    return _py(
        plan, "autotune", "--gpu", "--no-selfcheck", "--models", "cvig_ti", "cvig_b_hr",
        "--dtypes", "bfloat16", "--batch-sizes", "1", "256", "--max-minutes", minutes,
    )  # fmt: skip


def _tests(plan: Plan, inner: float) -> list[str]:
    if plan.rehearse:
        files = ["tests/kernels/test_interpreter.py", "tests/kernels/test_partition.py"]
        return _py(plan, "pytest", "-q", "-p", "no:cacheprovider", *files)
    return _py(
        plan, "pytest", "-q", "-p", "no:cacheprovider", "tests/kernels",
        "--deselect", "tests/kernels/test_aot_compile.py",
    )  # fmt: skip


PHASES = (
    Phase("environment", None, 0.04, 20, _environment),
    Phase("selfcheck", "selfcheck.json", 0.16, 15, _selfcheck, copies_cache=True),
    Phase("headline", "headline.json", 0.32, 20, _headline),
    Phase("kernels", "kernels.json", 0.16, 15, _kernels),
    Phase("models", "models.json", 0.14, 20, _models),
    Phase("autotune", "tuning-cache.json", 0.12, 10, _autotune, copies_cache=True),
    Phase("tests", "pytest-cuda.log", 0.06, 10, _tests, log_to_file=True),
)
FILES = ("session.json", "session.log") + tuple(p.file for p in PHASES if p.file)
assert len(set(FILES)) == len(FILES) <= MAX_FILES


# --------------------------------------------------------------------------------------------
# Running the plan
# --------------------------------------------------------------------------------------------
def run_plan(plan: Plan, phases: tuple[Phase, ...] = PHASES) -> dict:
    """Run ``phases`` within ``plan.budget`` seconds; returns (and keeps writing) the summary."""
    start = time.monotonic()
    plan.out.mkdir(parents=True, exist_ok=True)
    usable = max(0.0, plan.budget - RESERVE_S[plan.kind])
    summary = {
        "kind": "gpu-session",
        "rehearse": plan.rehearse,
        "budget_s": plan.budget,
        "started": _now(),
        "environment": None,
        "phases": [],
        "elapsed_s": None,
    }
    log = plan.path("session.log").open("a", buffering=1)
    env = _phase_env(plan)
    shares = sum(p.share for p in phases) or 1.0
    cumulative = 0.0
    try:
        _log(log, start, f"plan: {len(phases)} phases in {plan.budget:.0f} s ({plan.kind})")
        for phase in phases:
            cumulative += phase.share / shares
            now = time.monotonic()
            left = start + usable - now
            # its share of the budget, but at least its minimum while the budget has that left
            # (the later phases' cumulative deadlines then give them less)
            cap = min(max(start + cumulative * usable - now, phase.min_seconds), left)
            row = {"name": phase.name, "file": phase.file, "cap_s": round(max(cap, 0.0), 1)}
            if cap < phase.min_seconds:
                row.update(status="skipped", reason="skipped: no time", seconds=0.0)
                _log(
                    log,
                    start,
                    f"{phase.name}: skipped: no time ({cap:.0f} s < {phase.min_seconds} s)",
                )
            else:
                row.update(_run_phase(plan, phase, cap, env, log, start))
                if phase.name == "environment":
                    summary["environment"] = row.pop("stdout_json", None)
                if phase.copies_cache:
                    _copy_cache(plan)
            row.pop("stdout_json", None)
            summary["phases"].append(row)
            summary["elapsed_s"] = round(time.monotonic() - start, 1)
            _write_json(plan.path("session.json"), summary)
    finally:
        _tidy(plan.out)
        summary["elapsed_s"] = round(time.monotonic() - start, 1)
        summary["budget_held"] = summary["elapsed_s"] <= plan.budget + BUDGET_SLACK_S
        _write_json(plan.path("session.json"), summary)
        _log(log, start, f"done in {summary['elapsed_s']:.0f} s of {plan.budget:.0f}")
        log.close()
    return summary


def _run_phase(plan: Plan, phase: Phase, cap: float, env: dict, log, start: float) -> dict:
    inner = max(1.0, cap * (1 - INNER_MARGIN) - KILL_GRACE_S)
    try:
        argv = phase.command(plan, inner)
    except Exception as err:  # noqa: BLE001 - a phase that cannot even be planned fails alone
        _log(log, start, f"{phase.name}: failed to start: {type(err).__name__}: {err}")
        return {"status": "failed", "reason": f"{type(err).__name__}: {err}", "seconds": 0.0}
    _log(log, start, f"{phase.name}: cap {cap:.0f} s: {' '.join(argv)[:300]}")
    began = time.monotonic()
    sink = plan.path(phase.file).open("w") if phase.log_to_file else log
    capture = phase.name == "environment"
    try:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else sink,
            stderr=subprocess.STDOUT if not capture else log,
            start_new_session=True,  # its children (compile workers) are killed with it
            text=True,
        )
    except OSError as err:
        if sink is not log:
            sink.close()
        _log(log, start, f"{phase.name}: failed to start: {err}")
        return {"status": "failed", "reason": str(err), "seconds": 0.0}
    timed_out = False
    try:
        stdout, _ = proc.communicate(timeout=max(1.0, cap - KILL_GRACE_S))
    except subprocess.TimeoutExpired:
        timed_out = True
        stdout = _stop(proc)
    finally:
        if sink is not log:
            sink.close()
    seconds = round(time.monotonic() - began, 1)
    row: dict = {"seconds": seconds, "exit": proc.returncode}
    if timed_out:
        row.update(status="timeout", reason=f"killed at its cap ({cap:.0f} s)")
    elif proc.returncode == 0:
        row.update(status="ok")
    else:
        row.update(status="failed", reason=f"exit status {proc.returncode}")
    if capture:
        row["stdout_json"] = _last_json(stdout or "")
        if row["stdout_json"] is None and row["status"] == "ok":
            row.update(status="failed", reason="printed no JSON")
    if phase.file and not plan.path(phase.file).exists():
        row["reason"] = (row.get("reason", "") + "; left no file").lstrip("; ")
        if row["status"] == "ok":
            row["status"] = "failed"
    _log(log, start, f"{phase.name}: {row['status']} in {seconds:.0f} s {row.get('reason', '')}")
    return row


def _stop(proc: subprocess.Popen) -> str | None:
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.communicate(timeout=wait)[0]
        except subprocess.TimeoutExpired:
            continue
    return None


def _phase_env(plan: Plan) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env["CLUSTERVIG_AUTOTUNE_DIR"] = str(plan.cache_dir)
    env["PYTHONUNBUFFERED"] = "1"
    if plan.rehearse:
        env["TRITON_INTERPRET"] = "1"
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env.pop("TRITON_INTERPRET", None)
    return env


def _copy_cache(plan: Plan) -> None:
    files = sorted(plan.cache_dir.glob("*.json"))
    if not files:
        return
    merged = {f.name: json.loads(f.read_text()) for f in files} if len(files) > 1 else None
    target = plan.path("tuning-cache.json")
    if merged is None:
        shutil.copyfile(files[0], target)
    else:
        _write_json(target, merged)


def _tidy(out: Path) -> None:
    """Remove temporary files a killed phase left (they would count against the 8 files)."""
    for stray in out.glob("*.tmp"):
        stray.unlink(missing_ok=True)
    for stray in out.glob(".*.tmp"):
        stray.unlink(missing_ok=True)


def _log(log, start: float, message: str) -> None:
    line = f"[gpu-session +{time.monotonic() - start:.0f}s] {message}"
    print(line, flush=True)
    log.write(line + "\n")


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


_ENVIRONMENT_SCRIPT = r"""
import json, os, platform, shutil, subprocess
info = {"python": platform.python_version(), "cpu_count": os.cpu_count()}
from importlib.metadata import PackageNotFoundError, version
for name in ("torch", "triton", "numpy", "timm", "onnxruntime"):  # read, not imported: fast
    try:
        info[name] = version(name)
    except PackageNotFoundError:
        info[name] = None
import torch
info["cuda"] = torch.version.cuda
info["cuda_available"] = torch.cuda.is_available()
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                memory_gib=round(p.total_memory / 2**30, 1))
if shutil.which("nvidia-smi"):
    fields = ("name,driver_version,clocks.max.sm,clocks.sm,clocks.max.mem,power.limit,"
              "temperature.gpu")
    done = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=20)
    info["nvidia_smi"] = {"fields": fields, "rows": done.stdout.strip().splitlines()}
print(json.dumps(info))
"""


# --------------------------------------------------------------------------------------------
# The kernels phase (in its own process)
# --------------------------------------------------------------------------------------------
#: The static report's Lloyd iterations per image (its default assumption).
STATIC_KMEANS_ITERS = 12


def kernels_phase(out: Path, max_seconds: float, rehearse: bool) -> int:
    """Time each kernel beside its reference (``reports.micro``) at the plan's shapes, and put
    the static report's H200 estimate of the same launch beside it. The static reports compile
    on the CPU in background processes while the GPU measures; rows whose estimate is not ready
    by the cap say so."""
    deadline = time.monotonic() + max_seconds
    target = out / "kernels.json"
    scratch = Path(tempfile.mkdtemp(prefix="clustervig-static-"))
    shapes = KERNEL_SHAPES["rehearse" if rehearse else "gpu"]
    statics = {shape: _start_static(shape, scratch, rehearse) for shape in shapes}

    import torch

    from . import micro
    from .common import write_json

    device = torch.device("cpu" if rehearse else "cuda")
    dtype = torch.float32 if rehearse else torch.bfloat16
    doc: dict = {"kind": "kernels", "gpu_table": "h200", "complete": False, "rows": []}
    write_json(target, doc)
    measured_all = True
    for model, batch in shapes:
        part = micro.run(device, [model], [batch], [dtype], deadline=deadline)
        doc.setdefault("environment", part["environment"])
        doc["peaks"] = part["peaks"]
        doc["rows"] += part["rows"]
        measured_all &= part["complete"]
        write_json(target, doc)
    estimates = {}
    for shape, (proc, path) in statics.items():
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.returncode == 0 and path.exists():
            estimates[shape] = json.loads(path.read_text())
    doc["rows"] = attach_estimates(doc["rows"], estimates)
    doc["complete"] = measured_all and len(estimates) == len(shapes)
    write_json(target, doc)
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _start_static(shape: tuple[str, int], scratch: Path, rehearse: bool):
    model, batch = shape
    path = scratch / f"{model}-b{batch}.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # compiles for sm_90 on the CPU; leaves the GPU alone
    argv = [
        sys.executable, "-m", "reports.static", "--model", model, "--batch-size", str(batch),
        "--gpu", "h200", "--dtype", "fp32" if rehearse else "bf16",
        "--kmeans-iters", str(STATIC_KMEANS_ITERS), "--json", str(path),
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return proc, path


def attach_estimates(rows: list[dict], estimates: dict[tuple[str, int], dict]) -> list[dict]:
    """Each Triton row of ``reports.micro`` with the static estimate of the same op in the
    model's last layer (the micro cases' K is the deepest block's): ``estimate_us`` (the sum of
    that layer's launches of the op) and ``measured_over_estimated``. Rows without a report say
    ``estimate: null`` and why."""
    out = []
    for row in rows:
        row = dict(row)
        report = estimates.get((row["case"], row["batch_size"]))
        if row["impl"] == "triton" or report is not None:
            est = _layer_estimate(report, row["op"]) if report else None
            row["estimate_us"] = est
            row["estimate_assumes_lloyd_iterations"] = (
                STATIC_KMEANS_ITERS if row["op"] == "kmeans" else None
            )
            if est is None:
                row["estimate_missing"] = (
                    "the static report did not finish in time" if report is None
                    else "no launch of this op in the static report"
                )  # fmt: skip
            elif row["impl"] == "triton":
                row["measured_over_estimated"] = row["median_ms"] * 1e3 / est
        out.append(row)
    return out


def _layer_estimate(report: dict, op: str) -> float | None:
    launches = [r for r in report["launches"] if r.get("op") == op]
    if not launches:
        return None
    last = max(launches, key=lambda r: int(r["layer"].split()[-1]))["layer"]
    return sum(r["est_us"] for r in launches if r["layer"] == last)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=".ci/gpu-session",
        description="A lent GPU's work as one plan (phases in order of value, each capped and "
        "writing its results row by row): environment, self-check, headline benchmark, kernel "
        "timings beside their estimates, more models, bounded autotune, kernel tests.",
    )
    parser.add_argument(
        "budget", nargs="?", type=seconds(3600), default=540.0,
        help="seconds for the whole plan (default 540: a 600 s command with room to copy back)",
    )  # fmt: skip
    parser.add_argument(
        "--rehearse",
        type=seconds(3600),
        metavar="SECONDS",
        help="run the plan on this CPU under the Triton interpreter with tiny shapes in SECONDS; "
        "exit 1 unless every phase left its file (or was skipped for time) and the budget held",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the output folder (default $OUT, else /tmp/clustervig-gpu-out)",
    )
    parser.add_argument("--phase", choices=["kernels"], help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=seconds(3600), help=argparse.SUPPRESS)
    return parser


def verdict(summary: dict) -> list[str]:
    """What is wrong with a finished plan (empty: every phase ran or was skipped for time, and
    the budget held)."""
    problems = [
        f"{p['name']}: {p['status']} ({p.get('reason', '')})"
        for p in summary["phases"]
        if p["status"] != "ok" and p.get("reason") != "skipped: no time"
    ]
    if not summary.get("budget_held", False):
        problems.append(f"budget: {summary['elapsed_s']} s of {summary['budget_s']} s")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = args.out or Path(os.environ.get("OUT") or "/tmp/clustervig-gpu-out")
    if args.phase == "kernels":
        return kernels_phase(out, args.max_seconds or 60.0, bool(args.rehearse))
    try:
        out.mkdir(parents=True, exist_ok=True)
        cache_dir = Path(tempfile.mkdtemp(prefix="clustervig-gpu-cache-"))
    except OSError as err:
        print(f".ci/gpu-session: cannot use --out {out}: {err}", file=sys.stderr)
        return 2
    plan = Plan(out, args.rehearse or args.budget, args.rehearse is not None, cache_dir)
    summary = run_plan(plan)
    shutil.rmtree(cache_dir, ignore_errors=True)
    problems = verdict(summary)
    for problem in problems:
        print(f".ci/gpu-session: {problem}", file=sys.stderr)
    return 1 if (plan.rehearse and problems) else 0


if __name__ == "__main__":
    sys.exit(main())
