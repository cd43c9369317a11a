"""``kernels.selfcheck``: the CLI, verdicts, the first-use check and the reference fallback."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import kernels
from kernels import selfcheck, tuning_cache
from kernels.aggregate import kernel as aggregate
from kernels.selfcheck import KernelSelfCheckWarning

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERVIG_AUTOTUNE_DIR", str(tmp_path))
    monkeypatch.delenv("CLUSTERVIG_SELFCHECK", raising=False)
    tuning_cache.reset()
    selfcheck.reset()
    yield
    tuning_cache.reset()
    selfcheck.reset()


def _recorded(tmp_path) -> dict:
    path = tuning_cache.cache_path(tuning_cache.device_identity(CPU), tmp_path)
    return json.loads(path.read_text())["verdicts"]


@pytest.mark.interpreter  # in this process: without the interpreter the CLI would restart it
def test_cli_interpret_passes_and_records_every_kernel(tmp_path, capsys):
    assert selfcheck.main(["--interpret"]) == 0
    out = capsys.readouterr().out
    for kernel in selfcheck.KERNELS:
        assert kernel in out
    assert "25 of 25 kernel/dtype checks passed" in out
    verdicts = _recorded(tmp_path)
    assert len(verdicts) == 25 and all(v["ok"] for v in verdicts.values())
    kmeans_source = kernels.kmeans.launch.KMEANS.source_hash()
    assert verdicts["kmeans/bfloat16"]["source_hash"].startswith(kmeans_source)


def test_cli_without_a_gpu_says_what_to_do(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert selfcheck.main([]) == 2
    assert "--interpret" in capsys.readouterr().err


def _broken_max_aggregate(monkeypatch):
    """The forward kernel's launcher, off by one in every value."""
    real = aggregate.launch_max_aggregate
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        out, slot = real(*args, **kwargs)
        out.add_(1.0)
        return out, slot

    monkeypatch.setattr(aggregate, "launch_max_aggregate", broken)
    return calls


def test_a_broken_kernel_fails_is_recorded_and_falls_back_with_one_warning(tmp_path, monkeypatch):
    from clustervig import CViG

    torch.manual_seed(0)
    model = CViG(channels=16, depth=2, grid=4, img_size=32, num_clusters=2, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), kernels.use_backend("torch"):
        expected = model(x)

    calls = _broken_max_aggregate(monkeypatch)
    result = selfcheck.check("max_aggregate", torch.float32, CPU)
    assert not result.ok and "values differ" in result.detail
    selfcheck.record([result], CPU, "quick")
    assert _recorded(tmp_path)["max_aggregate/float32"]["ok"] is False

    selfcheck.reset()  # a new process: the verdict comes from the file
    calls.clear()
    with warnings.catch_warnings(record=True) as caught, kernels.use_backend("triton"):
        warnings.simplefilter("always")
        with torch.no_grad():
            first = model(x)
            second = model(x)
    ours = [w for w in caught if issubclass(w.category, KernelSelfCheckWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert "'max_aggregate'" in str(ours[0].message) and "report" in str(ours[0].message)
    assert not calls, "the failed kernel was launched"
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second, expected, atol=1e-5, rtol=1e-5)


def test_first_use_check_runs_once_and_records(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERVIG_SELFCHECK", "on")
    from kernels import checking

    ran = []
    real = checking.run_check
    monkeypatch.setattr(
        checking,
        "run_check",
        lambda k, d, *a, **kw: ran.append((k.name, d)) or real(k, d, *a, **kw),
    )
    x = torch.randn(12, 8)
    nbr = torch.randint(0, 12, (12, 3), dtype=torch.int32)
    with kernels.use_backend("triton"):
        for _ in range(3):
            kernels.max_aggregate(x, nbr)
    assert ran == [("max_aggregate", torch.float32)]
    assert _recorded(tmp_path)["max_aggregate/float32"]["ok"] is True


def test_first_use_check_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERVIG_SELFCHECK", "off")
    _broken_max_aggregate(monkeypatch)
    x = torch.randn(12, 8)
    nbr = torch.randint(0, 12, (12, 3), dtype=torch.int32)
    with kernels.use_backend("triton"):
        kernels.max_aggregate(x, nbr)  # no check ran: the broken kernel itself answered
    path = tuning_cache.cache_path(tuning_cache.device_identity(CPU), tmp_path)
    assert not path.exists()


@pytest.mark.interpreter
def test_a_failing_first_use_check_falls_back(monkeypatch):
    monkeypatch.setenv("CLUSTERVIG_SELFCHECK", "on")
    calls = _broken_max_aggregate(monkeypatch)
    x = torch.randn(12, 8)
    nbr = torch.randint(0, 12, (12, 3), dtype=torch.int32)
    with pytest.warns(KernelSelfCheckWarning, match="max_aggregate"):
        with kernels.use_backend("triton"):
            out = kernels.max_aggregate(x, nbr)
    calls.clear()
    with kernels.use_backend("triton"):
        again = kernels.max_aggregate(x, nbr)
    assert not calls
    from kernels import reference

    expected = reference.max_aggregate(x, nbr, True, False)[0]
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(again, expected)


def test_a_verdict_for_another_kernel_source_is_ignored(tmp_path):
    result = selfcheck.CheckResult("partition", "int32", ok=False, detail="old bug")
    selfcheck.record([result], CPU, "quick")
    selfcheck.reset()
    path = tuning_cache.cache_path(tuning_cache.device_identity(CPU), tmp_path)
    doc = json.loads(path.read_text())
    doc["verdicts"]["partition/int32"]["source_hash"] = "0" * 16
    path.write_text(json.dumps(doc))
    tuning_cache.reset()
    from kernels import registry, verdicts

    assert verdicts.recorded_verdict(registry.kernel("partition"), torch.int32, CPU) is None
    labels = torch.randint(0, 3, (2, 10), dtype=torch.int32)
    with warnings.catch_warnings(), kernels.use_backend("triton"):
        warnings.simplefilter("error")
        kernels.partition(labels, 3)  # no failed verdict applies: no warning


def test_unknown_kernel_or_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="'kernel'"):
        selfcheck.check("knn", torch.float32, CPU)
    with pytest.raises(ValueError, match="'mode'"):
        selfcheck.check("kmeans", torch.float32, CPU, mode="fast")


def test_cli_interpret_from_a_fresh_process(tmp_path):
    """As a user runs it: TRITON_INTERPRET unset (importing the package imports Triton, so the
    CLI restarts itself with the variable set)."""
    from tests.helpers import run_as_a_user

    proc = run_as_a_user(
        ["-m", "kernels.selfcheck", "--interpret", "--kernels", "partition"],
        CLUSTERVIG_AUTOTUNE_DIR=str(tmp_path),
    )
    assert "1 of 1 kernel/dtype checks passed" in proc.stdout


def test_full_check_runs_the_resident_kmeans_at_cvig_ti_shape():
    """The resident verdict covers its kernel's source: the full check must launch it at the
    models' shape that takes it (196 x 192), not only at the small first-use shapes (it used to
    drop the path for every shape once one shape did not fit)."""
    from kernels.checking import SHAPES
    from kernels.kmeans import cases

    plan = cases.kmeans_plan(torch.bfloat16, CPU, SHAPES["full"])
    resident = [SHAPES["full"][i].kmeans for path, i in plan if path == "resident"]
    assert (1, 196, 192, 4) in resident
    assert all(s[1] <= 256 for s in resident)  # and only where it fits
    image = [SHAPES["full"][i].kmeans for path, i in plan if path == "image"]
    assert len(image) == len(SHAPES["full"])


@pytest.mark.interpreter
def test_a_check_killed_half_way_keeps_the_verdicts_it_reached(tmp_path):
    """Verdicts are recorded as each is decided: kill the CLI once a few kernels are done and
    find exactly those kernels' verdicts (and the rows of its --json so far)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "CLUSTERVIG_AUTOTUNE_DIR": str(tmp_path), "TRITON_INTERPRET": "1"}
    out = tmp_path / "rows.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernels.selfcheck", "--interpret", "--json", str(out)],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    printed = []
    try:
        for line in proc.stdout:
            fields = line.split()
            if fields and fields[0] in selfcheck.KERNELS:
                printed.append(f"{fields[0]}/{fields[1]}")
            if len(printed) == 4:  # center_tokens x3 and kmeans/float32: then kill it
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    verdicts = _recorded(tmp_path)
    assert set(printed) <= set(verdicts), (printed, sorted(verdicts))
    assert len(verdicts) < 25  # it was stopped before the end
    assert all(verdicts[k]["ok"] for k in printed)
    rows = json.loads(out.read_text())["rows"]
    assert [f"{r['kernel']}/{r['dtype']}" for r in rows][: len(printed)] == printed


def test_dtypes_narrow_the_float_kernels_and_keep_the_index_kernel(monkeypatch):
    seen = []
    monkeypatch.setattr(
        selfcheck, "check", lambda k, d, dev, mode: seen.append((k, d, mode)) or None
    )
    selfcheck.check_all(CPU, "launch", ("kmeans", "partition"), dtypes=(torch.bfloat16,))
    assert seen == [("kmeans", torch.bfloat16, "launch"), ("partition", torch.int32, "launch")]


def test_quick_and_another_mode_conflict(capsys):
    with pytest.raises(SystemExit) as stop:
        selfcheck.main(["--quick", "--mode", "full"])
    assert stop.value.code == 2 and "--quick" in capsys.readouterr().err
