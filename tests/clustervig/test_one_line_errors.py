"""The README's promise, case by case: a user's mistake is one line on stderr and exit status 2,
never a traceback (each command run in a subprocess, as a user runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels import tuning_cache

ROOT = Path(__file__).resolve().parents[2]


def _run(*argv: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _one_line(done: subprocess.CompletedProcess, *phrases: str) -> str:
    err = done.stderr.strip()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in err and "\x1b[" not in err, err
    assert len(err.splitlines()) == 1, err
    for phrase in phrases:
        assert phrase in err, err
    return err


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    from clustervig.demo_data import write_digits

    root = tmp_path_factory.mktemp("digits")
    write_digits(root, per_class=3)
    return root


def test_export_to_an_unwritable_place():
    done = _run("clustervig", "export", "cvig_ti", "--img-size", "32", "--out", "/proc/x.onnx")
    _one_line(done, "--out", "cannot write")


def test_demo_data_into_an_unwritable_place():
    _one_line(_run("clustervig.demo_data", "/proc/clustervig-digits"), "cannot write")


@pytest.mark.parametrize("case", ["missing", "empty", "not a checkpoint"])
def test_a_bad_teacher_checkpoint(digits, tmp_path, case):
    path = tmp_path / "teacher.pth"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "not a checkpoint":
        path.write_text("these are not weights")
    done = _run(
        "clustervig.train", "--data", str(digits), "--model", "cvig_ti", "--model-args",
        "depth=2", "channels=32", "--img-size", "32", "--epochs", "1", "--workers", "0",
        "--teacher", "resnet18", "--teacher-checkpoint", str(path),
        "--output", str(tmp_path / "run"), "--no-progress",
    )  # fmt: skip
    expected = {"missing": "no checkpoint file", "empty": "is empty", "not a checkpoint": "cannot"}
    _one_line(done, "--teacher-checkpoint", expected[case])
    assert not (tmp_path / "run").exists()


def test_an_autotune_cache_directory_that_is_a_file(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("x")
    done = _run("autotune", "--interpret", "--ops", "partition", "--cache-dir", str(blocker))
    _one_line(done, "cache directory", "cannot be written")


@pytest.mark.parametrize(
    "command",
    [("reports", "quick", "--device", "cpu"), ("clustervig", "--models", "cvig_ti")],
    ids=["reports quick", "clustervig"],
)
def test_a_bogus_backend_is_one_line_before_any_work(command, tmp_path):
    done = _run(*command, env={"CLUSTERVIG_BACKEND": "bogus"}, cwd=tmp_path)
    _one_line(done, "CLUSTERVIG_BACKEND", "'bogus'")
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


def test_a_misspelt_selfcheck_setting_is_not_silently_auto(tmp_path):
    done = _run("clustervig", "--models", "cvig_ti", env={"CLUSTERVIG_SELFCHECK": "maybe"})
    _one_line(done, "CLUSTERVIG_SELFCHECK", "auto, on or off", "'maybe'")


def test_a_pickle_checkpoint_is_refused_in_one_line_without_advising_to_trust_it(digits, tmp_path):
    evil = tmp_path / "evil.pt"
    code = (
        "import torch\n"
        "class Payload:\n"
        "    def __reduce__(self):\n"
        "        return (print, ('this ran',))\n"
        f"torch.save({{'model': Payload()}}, {str(evil)!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    done = _run("clustervig.validate", "--checkpoint", str(evil), "--data", str(digits))
    err = _one_line(done, "--checkpoint", "refused unread")
    assert "weights_only=False" not in err and "this ran" not in done.stdout


def test_visualize_never_creates_folders_for_its_output(tmp_path):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    target = tmp_path / "nonexistent" / "x.png"
    done = _run("clustervig.visualize", str(image), "--img-size", "64", "--out", str(target))
    _one_line(done, "--out", "does not exist")
    assert not target.parent.exists()


@pytest.mark.parametrize(
    "command", [("clustervig", "export"), ("clustervig", "convert"), ("reports", "quick")]
)
def test_every_subcommand_has_a_version(command):
    done = _run(*command, "--version")
    assert done.returncode == 0 and done.stdout.startswith("clustervig "), done.stderr


# --------------------------------------------------------------------------------------------
# the autotune cache: bounded in size and depth, type-strict
# --------------------------------------------------------------------------------------------
IDENTITY = {"device": "cpu", "triton": "test"}


def _cache_file(tmp_path: Path, entries: dict) -> Path:
    path = tmp_path / "c.json"
    data = {"format": tuning_cache.FORMAT_VERSION, "device": IDENTITY, "entries": entries}
    path.write_text(json.dumps(data))
    return path


def test_a_float_block_size_is_not_a_config():
    from kernels.registry import tunables

    tunable = tunables()["partition"]
    config = dict(tunable.default["e4"])
    entry = {
        "config": {k: float(v) if k.startswith("BLOCK") else v for k, v in config.items()},
        "source_hash": tunable.source_hash(),
        "space_hash": tunable.space_hash(),
    }
    assert tuning_cache._valid_config(entry, tunable, "e4/x") is None
    entry["config"] = config
    assert tuning_cache._valid_config(entry, tunable, "e4/x") == config


def test_a_deeply_nested_cache_is_refused_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    tables, problem = tuning_cache.inspect_file(path, IDENTITY)
    assert tables == {} and "nested too deeply" in problem
    shallow_but_deep = _cache_file(tmp_path, {"op": {"b": {"config": [[[[[[[[[1]]]]]]]]]}}})
    assert "nested too deeply" in tuning_cache.inspect_file(shallow_but_deep, IDENTITY)[1]


def test_a_huge_cache_file_is_not_read(tmp_path, monkeypatch):
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.truncate(600 * 2**20)  # sparse: 600 MB on paper, nothing on disk
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: pytest.fail("read it whole"))
    tables, problem = tuning_cache.inspect_file(path, IDENTITY)
    assert tables == {} and "600 MiB" in problem


def test_a_cache_of_the_shape_this_project_writes_passes_the_bounds(tmp_path):
    path = _cache_file(tmp_path, {"op": {"e4/b1": {"config": {"BLOCK_N": 32}, "time_ms": 0.1}}})
    tables, problem = tuning_cache.inspect_file(path, IDENTITY)
    assert problem is None and tables["entries"]["op"]["e4/b1"]["config"] == {"BLOCK_N": 32}
