"""reports: result schema, plotting from result files (gaps for OOM / failures), CLI validation,
and tiny real runs of every benchmark on the CPU."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from reports import bench, micro, plot, scaling
from reports.__main__ import main
from reports.common import write_json
from reports.schema import ResultError, load, validate

ENV = {
    "device": "Test CPU (2 threads)",
    "device_type": "cpu",
    "device_slug": "test-cpu",
    "torch": "2.13.0",
    "triton": "3.9.0",
    "date": "2026-11-24T00:00:00+00:00",
}


def _row(model, display, batch, ms=None, status="ok"):
    row = {
        "model": model,
        "display": display,
        "batch_size": batch,
        "compile": "none",
        "dtype": "float32",
        "status": status,
    }
    if status == "ok":
        row.update(
            median_ms=ms, p10_ms=ms * 0.9, p90_ms=ms * 1.1, repeats=5, throughput=batch / ms * 1e3
        )
    else:
        row["error"] = "CUDA out of memory" if status == "oom" else "RuntimeError: boom"
    return row


@pytest.fixture
def models_doc() -> dict:
    rows = []
    for b in (1, 2, 4, 8):
        rows.append(_row("pvig_ti", "PViG-Ti", b, 10.0 * b))
        rows.append(_row("cvig_ti", "CViG-Ti", b, 6.0 * b))
        rows.append(_row("ivig_ti", "IViG-Ti", b, 8.0 * b, "oom" if b == 8 else "ok"))
        rows.append(_row("pvig_s", "PViG-S", b, 20.0 * b))
        rows.append(_row("cvig_s", "CViG-S", b, 15.0 * b, "failed" if b == 2 else "ok"))
    return {"kind": "models", "schema": 1, "environment": ENV, "settings": {}, "rows": rows}


def test_schema_accepts_a_valid_document(models_doc):
    assert validate(models_doc) is models_doc


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: d.pop("environment"), "environment"),
        (lambda d: d.update(kind="weird"), "kind"),
        (lambda d: d.update(schema=7), "schema"),
        (lambda d: d["rows"][0].pop("model"), "lacks"),
        (lambda d: d["rows"][0].update(status="maybe"), "status"),
        (lambda d: d["rows"][0].pop("median_ms"), "median_ms"),
        (lambda d: d["rows"][0].update(batch_size=0), "batch_size"),
        (lambda d: d.update(rows={}), "rows"),
    ],
)
def test_schema_rejects_broken_documents(models_doc, mutate, match):
    doc = copy.deepcopy(models_doc)
    mutate(doc)
    with pytest.raises(ResultError, match=match):
        validate(doc)


def test_load_reports_unreadable_files(tmp_path):
    bad = tmp_path / "x-2026-01-01.json"
    bad.write_text("{not json")
    with pytest.raises(ResultError, match="cannot read"):
        load(bad)


def test_plot_from_a_fixture_result_file(models_doc, tmp_path):
    path = write_json(tmp_path / "test-cpu-2026-11-24.json", models_doc)
    written = plot.render([path], tmp_path / "fig")
    names = sorted(p.name for p in written)
    assert names == [
        "fig5-test-cpu-float32-none.png",
        "table6-test-cpu-float32-none.md",
        "throughput-test-cpu-float32-none.png",
    ]
    for p in written:
        assert p.stat().st_size > 0
    table = (tmp_path / "fig" / "table6-test-cpu-float32-none.md").read_text()
    assert "| IViG-Ti | 125.0 | 125.0 | 125.0 | - |" in table  # OOM -> "-"
    assert "| CViG-S | 66.7 | x | 66.7 | 66.7 |" in table  # failed -> "x"
    assert "Test CPU" in table


def test_oom_and_failed_rows_are_gaps_in_the_curves(models_doc):
    series = plot._series(models_doc["rows"], "median_ms")
    assert series["ivig_ti"][8] != series["ivig_ti"][8]  # NaN: matplotlib leaves a gap
    assert series["cvig_s"][2] != series["cvig_s"][2]
    assert series["cvig_ti"][8] == 48.0


def test_newest_result_per_device_is_plotted(models_doc, tmp_path):
    old = copy.deepcopy(models_doc)
    old["environment"]["date"] = "2026-01-01T00:00:00+00:00"
    write_json(tmp_path / "test-cpu-2026-01-01.json", old)
    newer = write_json(tmp_path / "test-cpu-2026-11-24.json", models_doc)
    gpu = copy.deepcopy(models_doc)
    gpu["environment"]["device_slug"] = "other-gpu"
    other = write_json(tmp_path / "other-gpu-2026-02-02.json", gpu)
    (tmp_path / "broken.json").write_text("{")
    with pytest.warns(UserWarning, match="broken.json"):
        found = plot.find_results([tmp_path])
    assert [path for path, _ in found] == sorted([newer, other])


def test_cli_validates_arguments(capsys):
    for argv, message in [
        (["run", "--batch-sizes", "0"], "positive integers"),
        (["run", "--models", "nope"], "'name'"),
        (["run", "--repeats", "0"], "--repeats"),
        (["micro", "--cases", "cvig_xl"], "invalid choice"),
        (["run", "--dtype", "int8"], "expected one of bfloat16, float16, float32"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["run", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "choose a command"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert message in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["run", "--device", "cuda"])
        assert "no CUDA device" in capsys.readouterr().err


def test_cli_plot_of_a_missing_path_fails_cleanly(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "absent.json")]) == 2
    assert "no result file" in capsys.readouterr().err


def test_help_on_every_command(capsys):
    for argv in (
        ["--help"],
        ["run", "--help"],
        ["plot", "--help"],
        ["all", "--help"],
        ["micro", "--help"],
        ["scaling", "--help"],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
    assert "usage" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# tiny real runs
# --------------------------------------------------------------------------------------------
def test_bench_run_writes_a_valid_document(tmp_path):
    doc = bench.run(torch.device("cpu"), ["cvig_ti"], [1, 2], img_size=64, warmup=0, repeats=1)
    validate(doc)
    assert [r["status"] for r in doc["rows"]] == ["ok", "ok"]
    assert doc["environment"]["device_type"] == "cpu" and doc["settings"]["dtype"] == "float32"


def test_bench_records_oom_and_failures_instead_of_crashing(monkeypatch):
    class Flaky(torch.nn.Module):
        def forward(self, x):
            if x.shape[0] >= 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
            return x.mean()

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise ValueError("shape mismatch")

    models = {"cvig_ti": Flaky, "pvig_ti": Broken}
    monkeypatch.setattr(bench, "build_model", lambda key: models[key]())
    monkeypatch.setattr(bench, "count_parameters", lambda m: 0)
    doc = bench.run(torch.device("cpu"), ["cvig_ti", "pvig_ti"], [1, 2, 4], warmup=0, repeats=1)
    validate(doc)
    status = {(r["model"], r["batch_size"]): r["status"] for r in doc["rows"]}
    assert status == {
        ("cvig_ti", 1): "ok",
        ("cvig_ti", 2): "oom",
        ("cvig_ti", 4): "oom",
        ("pvig_ti", 1): "failed",
        ("pvig_ti", 2): "failed",
        ("pvig_ti", 4): "failed",
    }
    assert "shape mismatch" in doc["rows"][3]["error"]


def test_scaling_run_and_plot(tmp_path):
    doc = scaling.run(
        torch.device("cpu"), batch_size=1, channels=16, k=4, grids=(4, 8), warmup=0, repeats=1
    )
    validate(doc)
    assert {r["layer"] for r in doc["rows"]} == {"degc", "dense_knn", "degc_graph", "dense_graph"}
    out = plot.plot_scaling(doc, tmp_path / "scaling.png")
    assert out.stat().st_size > 0


def test_micro_run_on_cpu(tmp_path):
    doc = micro.run(torch.device("cpu"), ["cvig_ti"], [1], repeats=1)
    validate(doc)
    ops = {r["op"] for r in doc["rows"]}
    from kernels.selfcheck import KERNELS

    assert ops == set(KERNELS)
    assert any(r["impl"] == "dense_masked_topk" for r in doc["rows"])
    assert doc["peaks"] is None
    assert "| cvig_ti |" in plot.micro_table(doc)
    json.dumps(doc)  # serialisable


def test_timm_comparison_models_are_built_through_timm(monkeypatch):
    """EfficientFormer joins the benchmark through timm when it is installed (faked here)."""
    import sys
    import types

    built = []
    fake = types.ModuleType("timm")

    def create_model(name, pretrained=False):
        built.append((name, pretrained))
        return torch.nn.Linear(2, 2)

    fake.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", fake)
    assert bench.resolve_model_name("efficientformer_l1") == "timm:efficientformer_l1"
    assert bench.display_name("timm:efficientformer_l3") == "EfficientFormer-L3"
    bench.build_model("timm:efficientformer_l7")
    assert built == [("efficientformer_l7", False)]


def test_timm_models_without_timm_fail_clearly(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ValueError, match="needs timm"):
        bench.resolve_model_name("timm:efficientformer_l1")


def test_cli_takes_both_dtype_spellings_and_has_a_version(capsys):
    from reports.__main__ import _dtype_name

    assert _dtype_name("bf16") == "bfloat16" and _dtype_name("FP32") == "float32"
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("clustervig ")


def test_results_go_to_the_working_directory_by_default(tmp_path, monkeypatch):
    from reports.__main__ import _parser

    monkeypatch.chdir(tmp_path)
    args = _parser().parse_args(["run"])
    assert not args.results_dir.is_absolute()
    assert (tmp_path / args.results_dir).resolve().is_relative_to(tmp_path.resolve())


def test_bench_rows_record_spread_noise_load_and_memory():
    doc = bench.run(
        torch.device("cpu"), ["cvig_ti", "cvig_s"], [1], img_size=64, warmup=1, repeats=3
    )
    validate(doc)
    assert doc["complete"] is True and doc["settings"]["interleaved"] is True
    env = doc["environment"]
    assert env["host_threads"] >= 1 and "omp_wait_policy" in env and "load_average" in env
    for row in doc["rows"]:
        assert row["status"] == "ok" and row["repeats"] == 3
        assert row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]
        assert isinstance(row["noisy"], bool) and (row["noise"] is None) == (not row["noisy"])
        assert row["peak_memory_mib"] is not None and row["peak_memory_mib"] >= 0
        assert "load_before" in row and "load_after" in row


def test_noise_verdict_flags_spread_and_load():
    from reports.common import Timing, noise_verdict

    assert noise_verdict(Timing(1.0, 0.95, 1.05, 7), 2, 0.1, 0.2) is None
    assert "spread" in noise_verdict(Timing(1.0, 0.5, 2.0, 7), 2, 0.1, 0.2)
    assert "load average" in noise_verdict(Timing(1.0, 0.95, 1.05, 7), 2, 500.0, 0.2)


def test_partial_results_are_written_after_every_row(tmp_path, monkeypatch):
    seen = []
    doc = bench.run(
        torch.device("cpu"),
        ["cvig_ti"],
        [1, 2],
        img_size=64,
        warmup=0,
        repeats=1,
        on_update=lambda partial: seen.append((partial["complete"], len(partial["rows"]))),
    )
    assert seen == [(False, 1), (False, 2)] and doc["complete"] is True


def test_the_time_cap_skips_what_it_did_not_reach(monkeypatch):
    """Past the deadline nothing new is warmed (compiled) or timed: those rows say 'skipped',
    the rows before it stand, and the document says it is not complete."""
    import time

    class Quick(torch.nn.Module):
        def forward(self, x):
            return x.mean()

    monkeypatch.setattr(bench, "build_model", lambda key: Quick())
    monkeypatch.setattr(bench, "count_parameters", lambda m: 0)
    clock = {"now": 0.0}
    monkeypatch.setattr(time, "monotonic", lambda: clock["now"])
    real = bench._measure_batch

    def measure_then_run_out(*args, **kwargs):
        out = real(*args, **kwargs)
        clock["now"] = 100.0  # the cap passes during the first batch size
        return out

    monkeypatch.setattr(bench, "_measure_batch", measure_then_run_out)
    doc = bench.run(
        torch.device("cpu"), ["cvig_ti", "pvig_ti"], [1, 2],
        compile_modes=("none", "default"), warmup=0, repeats=1, deadline=50.0,
    )  # fmt: skip
    validate(doc)
    status = {(r["compile"], r["model"], r["batch_size"]): r["status"] for r in doc["rows"]}
    assert status[("none", "cvig_ti", 1)] == "ok" and status[("none", "pvig_ti", 1)] == "ok"
    assert {v for k, v in status.items() if k[2] == 2 or k[0] == "default"} == {"skipped"}
    assert len(status) == 8 and doc["complete"] is False
    assert "no time" in doc["rows"][-1]["error"]


def test_noisy_series_are_drawn_hollow_with_a_note(models_doc, tmp_path):
    doc = copy.deepcopy(models_doc)
    doc["rows"][1].update(noisy=True, noise="p10-p90 spread 80% of the median")
    rows = doc["rows"]
    out = plot.plot_speedup(doc, rows, "none", "float32", tmp_path / "fig.png")
    assert out.exists() and out.stat().st_size > 0
    table = plot.table6(doc, rows, "none", "float32")
    assert "(noisy)" in table


def test_quick_main_job_writes_results_figures_and_prints_the_table(tmp_path, monkeypatch, capsys):
    import reports.__main__ as cli

    monkeypatch.setitem(cli.QUICK_BATCH_SIZES, "cpu", [1])
    results, figures = tmp_path / "results", tmp_path / "figures"
    assert (
        main(["quick", "--device", "cpu", "--results-dir", str(results), "--out", str(figures)])
        == 0
    )
    out = capsys.readouterr().out
    assert "speedup over PViG-Ti" in out and "CViG-Ti" in out and "1.00x" in out
    assert len(list(results.glob("*.json"))) == 1
    assert list(figures.glob("fig5-*.png")) and list(figures.glob("table6-*.md"))
    for line in out.splitlines():
        if line.startswith("  ") and line.strip().endswith((".png", ".md", ".json")):
            assert (tmp_path / line.strip()).exists() or Path(line.strip()).exists()


def test_peak_memory_on_the_cpu_sees_a_large_allocation():
    """In a fresh process: a long-lived one may serve the allocation from pages it already
    holds, which the resident-set peak rightly does not count."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from reports.common import PeakMemory\n"
        "with PeakMemory(torch.device('cpu')) as peak:\n"
        "    block = torch.ones(64 * 2**20 // 4)\n"
        "    del block\n"
        "print(peak.mib)\n"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    value = proc.stdout.strip().splitlines()[-1]
    if value == "None":
        pytest.skip("no /proc/self/clear_refs on this system")
    assert float(value) >= 48


def test_train_memory_benchmark_writes_rows_and_reports_a_failed_config(tmp_path):
    """A config that cannot run (Pyramid ViG at 64 px) is a row with its error, not a crash."""
    import json
    import subprocess
    import sys

    out = tmp_path / "mem"
    cmd = [
        sys.executable,
        "-m",
        "reports.train_memory",
        "--models",
        "cvig_ti",
        "pvig_ti",
        "--sizes",
        "64",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = {r["model"]: r for r in json.loads((out / "train-memory-cpu.json").read_text())["rows"]}
    assert rows["cvig_ti"]["step_s_median"] > 0 and rows["cvig_ti"]["peak_mib"] is not None
    assert "noisy" in rows["cvig_ti"] and "load_before" in rows["cvig_ti"]  # flagged like others
    assert "k * dilation" in rows["pvig_ti"]["error"]
    assert (out / "train-memory-cpu.png").stat().st_size > 0


def test_train_memory_flags_a_spread_that_load_would_cause():
    from reports.common import Timing, noise_verdict

    steady = Timing(1.0, 0.98, 1.02, 5)
    moved = Timing(1.0, 0.3, 3.0, 5)  # step times that moved 10x under load
    assert noise_verdict(steady, 2, None, None) is None
    assert "spread" in noise_verdict(moved, 2, None, None)


def test_cuda_graphs_mode_measures_small_batches_only():
    from reports.bench import REDUCE_OVERHEAD_MAX_BATCH, batches_for

    sizes = [1, 8, 16, 64, 256]
    assert batches_for("reduce-overhead", sizes) == [b for b in sizes if b <= 16]
    assert REDUCE_OVERHEAD_MAX_BATCH == 16
    assert batches_for("default", sizes) == sizes


def test_a_one_panel_fig5_keeps_its_title_and_note_inside(models_doc, tmp_path, monkeypatch):
    """``reports quick`` draws one panel: its long device line and noise note must wrap, not
    run off the figure."""
    doc = copy.deepcopy(models_doc)
    doc["environment"]["device"] = "AMD EPYC 9B14 96-Core Processor (2 threads of 96 cores)"
    for row in doc["rows"]:
        row.update(noisy=True, noise="p10-p90 spread 80% of the median; load average 3.1 on 2")
    rows = [r for r in doc["rows"] if r["model"] in ("cvig_ti", "pvig_ti")]
    kept = []
    monkeypatch.setattr(plot.plt, "close", lambda fig: kept.append(fig))
    plot.plot_speedup(doc, rows, "none", "float32", tmp_path / "fig.png")
    (fig,) = kept
    fig.canvas.draw()
    box = fig.bbox
    texts = [fig._suptitle, *fig.texts]
    for text in texts:
        extent = text.get_window_extent()
        assert extent.x0 >= box.x0 - 1 and extent.x1 <= box.x1 + 1, text.get_text()
        assert extent.y0 >= box.y0 - 1 and extent.y1 <= box.y1 + 1, text.get_text()
