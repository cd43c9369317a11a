"""``.ci/gpu-session``: the plan's budget, its phases' independence and its artefacts (CI runs the
whole rehearsal; these tests run the plan's machinery on phases of a few seconds)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import pytest

from reports import gpu_session
from reports.gpu_session import PHASES, Phase, Plan, attach_estimates, run_plan, verdict

ROOT = Path(__file__).resolve().parents[2]


def _script(code: str):
    return lambda plan, inner: [sys.executable, "-c", code]


def _plan(tmp_path: Path, budget: float) -> Plan:
    return Plan(tmp_path / "out", budget, True, tmp_path / "cache")


def test_a_failing_a_hanging_and_an_unplannable_phase_do_not_stop_the_next(tmp_path):
    out = tmp_path / "out"

    def write(name):
        return _script(f"open({str(out / name)!r}, 'w').write('rows')")

    def unplannable(plan, inner):
        raise RuntimeError("no such model")

    phases = (
        Phase("fails", "a.json", 1, 1, _script("raise SystemExit(3)")),
        Phase("after-failure", "b.json", 1, 1, write("b.json")),
        Phase("hangs", "c.json", 1, 1, _script("import time; time.sleep(600)")),
        Phase("after-hang", "d.json", 1, 1, write("d.json")),
        Phase("unplannable", "e.json", 1, 1, unplannable),
        Phase("last", "f.json", 1, 1, write("f.json")),
    )
    start = time.monotonic()
    summary = run_plan(_plan(tmp_path, 40), phases)
    elapsed = time.monotonic() - start
    status = {p["name"]: p["status"] for p in summary["phases"]}
    assert status == {
        "fails": "failed",
        "after-failure": "ok",
        "hangs": "timeout",
        "after-hang": "ok",
        "unplannable": "failed",
        "last": "ok",
    }
    assert elapsed <= 40 + gpu_session.BUDGET_SLACK_S and summary["budget_held"]
    assert {p.name for p in (out / "b.json", out / "d.json", out / "f.json")} <= {
        p.name for p in out.iterdir()
    }
    saved = json.loads((out / "session.json").read_text())
    assert [p["name"] for p in saved["phases"]] == list(status)
    assert "exit status 3" in saved["phases"][0]["reason"]
    assert "left no file" in saved["phases"][0]["reason"]
    log = (out / "session.log").read_text()
    assert "hangs: timeout" in log and "last: ok" in log
    assert len(verdict(saved)) == 3  # fails, hangs, unplannable


def test_a_phase_without_time_is_skipped_and_says_so_never_run_with_no_limit(tmp_path):
    ran = tmp_path / "ran"
    phases = (
        Phase("first", None, 0.5, 1, _script("import time; time.sleep(0.2)")),
        # its cumulative share leaves it less than its minimum: skipped, not run with 0 s
        Phase("greedy", "x.json", 0.01, 30, _script(f"open({str(ran)!r}, 'w')")),
        Phase("after", None, 0.49, 1, _script("pass")),
    )
    summary = run_plan(_plan(tmp_path, 12), phases)
    rows = {p["name"]: p for p in summary["phases"]}
    assert rows["greedy"]["status"] == "skipped" and rows["greedy"]["reason"] == "skipped: no time"
    assert not ran.exists()
    assert rows["after"]["status"] == "ok"
    assert verdict(summary) == []  # skipped for time is not a failure
    assert "greedy: skipped: no time" in (tmp_path / "out" / "session.log").read_text()


def test_every_phase_has_a_positive_cap_and_the_plan_fits_the_returned_files(tmp_path):
    assert len(gpu_session.FILES) <= gpu_session.MAX_FILES
    assert [p.name for p in PHASES][:3] == ["environment", "selfcheck", "headline"]
    plan = Plan(tmp_path, 540, False, tmp_path)
    headline = gpu_session._headline(plan, 100)
    assert "cvig_ti" in headline and "reduce-overhead" in headline and "1 16 64 256" in headline
    assert "--max-seconds" in headline and "bfloat16" in headline
    check = gpu_session._selfcheck(plan, 100)
    assert check[check.index("--mode") + 1] == "launch"
    tune = gpu_session._autotune(plan, 90)
    assert tune[tune.index("--max-minutes") + 1] == "1.500"


def test_a_killed_run_leaves_no_temporary_files(tmp_path):
    out = tmp_path / "out"
    phases = (
        Phase("leaves-tmp", None, 1, 1, _script(f"open({str(out / '.x.json.1.tmp')!r}, 'w')")),
    )
    run_plan(_plan(tmp_path, 10), phases)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_estimates_are_attached_to_the_triton_rows_from_the_last_layer():
    report = json.loads(
        (ROOT / "reports/results/static/after-cvig_ti-b256-h100-bf16.json").read_text()
    )
    rows = [
        {"case": "cvig_ti", "batch_size": 256, "op": "partition_knn", "impl": "triton",
         "median_ms": 0.06},
        {"case": "cvig_ti", "batch_size": 256, "op": "partition_knn", "impl": "reference",
         "median_ms": 1.0},
        {"case": "cvig_ti", "batch_size": 256, "op": "permute_rows", "impl": "triton",
         "median_ms": 0.01},
        {"case": "cvig_b_hr", "batch_size": 1, "op": "kmeans", "impl": "triton",
         "median_ms": 0.1},
    ]  # fmt: skip
    out = attach_estimates(rows, {("cvig_ti", 256): report})
    knn = [r for r in report["launches"] if r["op"] == "partition_knn" and r["layer"] == "layer 11"]
    assert out[0]["estimate_us"] == pytest.approx(sum(r["est_us"] for r in knn))
    assert out[0]["measured_over_estimated"] == pytest.approx(60.0 / out[0]["estimate_us"])
    assert "measured_over_estimated" not in out[1]  # the reference is not what was estimated
    assert out[2]["estimate_us"] is None and "no launch" in out[2]["estimate_missing"]
    assert out[3]["estimate_us"] is None and "did not finish" in out[3]["estimate_missing"]
    assert out[3]["estimate_assumes_lloyd_iterations"] == gpu_session.STATIC_KMEANS_ITERS


@pytest.mark.parametrize("args", [["0"], ["-5"], ["--rehearse", "nan"], ["4000"]])
def test_a_budget_that_is_no_time_is_refused(args, capsys):
    with pytest.raises(SystemExit) as stop:
        gpu_session.main(args)
    assert stop.value.code == 2 and "seconds" in capsys.readouterr().err


def test_the_phase_table_names_real_commands():
    """Each phase's command is a module this tree has (a renamed CLI would fail on the GPU)."""
    import importlib.util

    plan = Plan(Path("/tmp/x"), 540, False, Path("/tmp/y"))
    for phase in PHASES:
        argv = phase.command(plan, 60)
        if argv[1] == "-m":
            assert importlib.util.find_spec(argv[2]) is not None, (phase.name, argv[2])
    rehearsal = dataclasses.replace(plan, rehearse=True)
    assert "--interpret" in gpu_session._selfcheck(rehearsal, 60)
