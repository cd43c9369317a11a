"""``python -m autotune``: the CLI end to end under the Triton interpreter, as CI can run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autotune.__main__ import main
from autotune.space import model_launches
from autotune.tuner import tune
from kernels import tuning_cache as cache
from kernels.kmeans import launch as kmeans
from kernels.knn import kernel as knn
from kernels.registry import tunables
from kernels.tuning import LAUNCHES

#: The CLI's --interpret flow, in this process: it needs the interpreter the suite started with.
pytestmark = pytest.mark.interpreter
ROOT = Path(__file__).resolve().parents[2]
FAST_OPS = ["partition", "max_aggregate", "max_aggregate_backward"]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERVIG_AUTOTUNE_DIR", str(tmp_path))
    cache.reset()
    yield tmp_path
    cache.reset()


def test_interpret_flow_writes_a_cache_that_the_second_run_and_the_kernels_use(cache_dir, capsys):
    assert main(["--interpret", "--ops", *FAST_OPS]) == 0
    first = capsys.readouterr().out
    assert "to tune" in first and "summary" in first
    identity = cache.device_identity(torch.device("cpu"))
    data = json.loads(cache.cache_path(identity).read_text())
    assert data["format"] == cache.FORMAT_VERSION and data["device"] == identity
    assert set(data["entries"]) == set(FAST_OPS)
    for op, buckets in data["entries"].items():
        for entry in buckets.values():
            assert entry["config"] in [dict(c) for c in tunables()[op].interpret_space]
            assert entry["time_ms"] > 0 and entry["source_hash"] and entry["space_hash"]

    # Second run: everything cached, nothing tuned.
    assert main(["--interpret", "--ops", *FAST_OPS]) == 0
    second = capsys.readouterr().out
    assert ", 0 to tune" in second and "(1/" not in second

    # The kernels launch with the cached config.
    cache.reset()
    labels = torch.randint(0, 4, (1, 196), dtype=torch.int32)  # CViG-Ti, batch 1
    from kernels.partition import kernel as permute

    permute.launch_partition(labels, 4)
    bucket, config, source = LAUNCHES["partition"]
    assert source == "cache"
    assert config == data["entries"]["partition"][bucket]["config"]


def test_force_retunes(cache_dir, capsys):
    assert main(["--interpret", "--ops", "partition"]) == 0
    capsys.readouterr()
    assert main(["--interpret", "--ops", "partition", "--force"]) == 0
    assert "(1/1) partition" in capsys.readouterr().out


def test_dry_run_lists_buckets_and_tunes_nothing(cache_dir, capsys):
    assert (
        main(
            [
                "--interpret",
                "--dry-run",
                "--models",
                "cvig_ti",
                "cvig_b_hr",
                "--batch-sizes",
                "1",
                "64",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "partition_knn" in out and "kmeans" in out and "S1024" in out  # B-dagger: N = 784
    assert not list(cache_dir.glob("*.json"))


def test_show_prints_the_cache(cache_dir, capsys):
    main(["--interpret", "--ops", "partition"])
    capsys.readouterr()
    assert main(["--interpret", "--show"]) == 0
    out = capsys.readouterr().out
    assert "partition" in out and " ok" in out


def test_buckets_come_from_the_models():
    launches, notes = model_launches(tunables(), ["cvig_s", "pvig_s"], [1, 512], [torch.bfloat16])
    assert any("pvig_s" in n for n in notes)
    ops = {launch.op for launch in launches}
    # The model no longer permutes rows; CViG-S's 196 x 320 images do not fit resident k-means.
    assert ops == set(tunables()) - {"permute_rows", "kmeans_resident"}
    ti, _ = model_launches(tunables(), ["cvig_ti"], [1], [torch.bfloat16, torch.float32])
    resident = {(launch.bucket, launch.dtype) for launch in ti if launch.op == "kmeans_resident"}
    assert resident == {("e2/N196/C192/k4/B1", torch.bfloat16)}  # 16-bit features only
    knn_buckets = {launch.bucket for launch in launches if launch.op == "partition_knn"}
    # CViG-S: C=320, N=196, K from 9 to 18 -> K padded to 16 and 32, batch 1 and 512.
    assert knn_buckets == {f"e2/C320/K{k}/S256/M{m}" for k in (16, 32) for m in (256, 262144)}


def test_gpu_without_cuda_exits_nonzero_with_one_line():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = subprocess.run(
        [sys.executable, "-m", "autotune", "--gpu"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "CUDA" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--gpu", "--interpret"],
        ["--interpret", "--ops", "nope"],
        ["--interpret", "--batch-sizes", "0"],
        [],
    ],
)
def test_bad_arguments_exit_with_usage(args, cache_dir):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2


def test_tune_rejects_nothing_and_picks_a_space_config_for_kmeans_and_knn():
    from autotune.space import Launch

    for tunable, shape in (
        (kmeans.KMEANS, {"B": 2, "N": 40, "C": 24, "kappa": 3}),
        (knn.PARTITION_KNN, {"M": 80, "C": 24, "K": 9, "S": 40}),
    ):
        launch = Launch(tunable.name, torch.float32, shape, tunable.bucket(torch.float32, **shape))
        outcome = tune(launch, tunable, list(tunable.interpret_space), torch.device("cpu"), 0, 1)
        assert outcome.best in [dict(c) for c in tunable.interpret_space]
        assert not outcome.rejected and outcome.best_ms > 0


def test_tuning_starts_with_the_selfcheck_and_records_its_verdicts(cache_dir, capsys):
    assert main(["--interpret", "--ops", "max_aggregate"]) == 0
    out = capsys.readouterr().out
    assert "self-check" in out and "interpreter timing, not a speedup" in out
    identity = cache.device_identity(torch.device("cpu"))
    verdicts = json.loads(cache.cache_path(identity).read_text())["verdicts"]
    assert {k for k in verdicts} == {
        "max_aggregate/float32",
        "max_aggregate/float16",
        "max_aggregate/bfloat16",
    }
    assert all(v["ok"] for v in verdicts.values())


def test_configs_that_spill_on_the_installed_triton_are_dropped(monkeypatch):
    from autotune.tuner import drop_spilling
    from kernels import resources

    tunable = tunables()["permute_rows"]
    space = list(tunable.space["e4"])
    spilling = space[1]

    def usage(t, config, dtype, arch):
        stack = 16 if config == spilling else 0
        return resources.Usage(t.name, arch, "fp32", dict(config), 40, 0, stack, 0)

    monkeypatch.setattr(resources, "resource_usage", usage)
    kept, dropped = drop_spilling(tunable, space, torch.float32, 90)
    assert spilling not in kept and len(kept) == len(space) - 1
    assert dropped == [(spilling, "spills registers on this Triton (stack 16 B, local 0 B)")]


def test_show_and_dry_run_work_without_a_gpu(cache_dir, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["--show"]) == 0
    out = capsys.readouterr().out
    assert "user cache directory" in out and "shipped directory" in out
    assert main(["--gpu", "--dry-run", "--ops", "partition"]) == 0
    out = capsys.readouterr().out
    assert "no GPU visible" in out and "e4/N196/k4" in out


def test_show_marks_corrupt_and_absent_files(cache_dir, capsys):
    identity = cache.device_identity(torch.device("cpu"))
    cache.cache_path(identity).write_text('{"format": 1, "entries": {')
    with pytest.warns(cache.AutotuneCacheWarning) as record:
        assert main(["--interpret", "--show"]) == 0
    out = capsys.readouterr().out
    assert "user cache:" in out and "IGNORED: unreadable" in out
    assert "shipped defaults:" in out and "(absent)" in out
    assert "(present)" not in out
    # The warning names the package, not a line of library source.
    assert record[0].filename == "clustervig" and record[0].lineno == 0
    assert main(["--show"]) == 0
    assert "IGNORED" in capsys.readouterr().out


def test_dtype_spellings_are_interchangeable(cache_dir, capsys):
    assert main(["--interpret", "--dry-run", "--ops", "partition", "--dtypes", "fp32"]) == 0
    with pytest.raises(SystemExit) as stop:
        main(["--interpret", "--dtypes", "int8"])
    assert stop.value.code == 2
    assert "expected one of bfloat16, float16, float32" in capsys.readouterr().err


def test_interpret_from_a_fresh_process(tmp_path):
    """As a user runs it, TRITON_INTERPRET unset: the CLI sets it before anything imports
    Triton (building the parser, --version included, must not import the kernels)."""
    from tests.helpers import run_as_a_user

    proc = run_as_a_user(
        ["-m", "autotune", "--interpret", "--ops", "partition", "--no-selfcheck"],
        CLUSTERVIG_AUTOTUNE_DIR=str(tmp_path),
    )
    assert "tuned 1 buckets" in proc.stdout


def test_spill_checks_are_compiled_once_per_config(monkeypatch):
    from autotune.tuner import drop_spilling
    from kernels import resources

    tunable = tunables()["permute_rows"]
    space = list(tunable.space["e4"])
    compiled = []

    def usage(t, config, dtype, arch):
        compiled.append(tuple(sorted(config.items())))
        return resources.Usage(t.name, arch, "fp32", dict(config), 40, 0, 0, 0)

    monkeypatch.setattr(resources, "resource_usage", usage)
    memo: dict = {}
    for _ in range(3):  # three buckets of the same op and dtype
        kept, dropped = drop_spilling(tunable, space, torch.float32, 90, memo)
        assert kept == space and not dropped
    assert len(compiled) == len(space)
