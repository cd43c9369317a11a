"""The training and validation CLIs end to end on tiny real data (scikit-learn's digits)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clustervig import train as train_module
from clustervig.demo_data import write_digits
from clustervig.train import auto_grid
from clustervig.validate import main as validate_main

#: A two-block CViG keeps every run to seconds on a CPU.
TINY = ["--model", "cvig_ti", "--model-args", "depth=2", "channels=32", "--img-size", "32"]
#: No random augmentation: runs that must agree see the same pixels.
PLAIN = ["--scale", "1", "1", "--hflip", "0", "--smoothing", "0", "--no-progress", "--workers", "0"]
METRIC_KEYS = {
    "epoch",
    "train_loss",
    "val_loss",
    "val_top1",
    "val_top5",
    "lr",
    "images_per_s",
    "epoch_s",
}


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    write_digits(root, per_class=5)  # 4 train + 1 val image per digit: 40 / 10
    return root


def _one_epoch(data: Path) -> list[str]:
    """One epoch of the tiny model on ``data`` at batch 8, no random augmentation."""
    return ["--data", str(data), *TINY, *PLAIN, "--epochs", "1", "--batch-size", "8"]


def _train(argv: list[str]) -> int:
    return train_module.main(argv)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _train_one_epoch(argv: list[str], out: Path) -> tuple[dict, dict]:
    """Train as ``argv`` says (one epoch) into ``out``: its metrics row and ``last.pt``."""
    assert _train([*argv, "--output", str(out)]) == 0
    (row,) = _metrics(out)
    return row, torch.load(out / "last.pt", weights_only=True)


def test_auto_grid_gives_small_images_enough_nodes():
    assert auto_grid(32, "cvig_ti") == 4
    assert auto_grid(64, "cvig_ti") == 8
    assert auto_grid(96, "cvig_ti") == 12
    assert auto_grid(128, "cvig_ti") == 8
    assert auto_grid(28, "cvig_ti") == 7  # MNIST-sized: 4 px a node
    assert auto_grid(24, "cvig_ti") == 3 and auto_grid(16, "cvig_ti") == 2
    assert auto_grid(200, "cvig_ti") == 25 and auto_grid(30, "cvig_ti") is None
    assert auto_grid(224, "cvig_ti") is None and auto_grid(32, "pvig_ti") is None


def test_one_epoch_end_to_end_then_validate_the_checkpoint(digits, tmp_path, capsys):
    out = tmp_path / "run"
    row, blob = _train_one_epoch(_one_epoch(digits), out)
    assert METRIC_KEYS <= set(row) and row["epoch"] == 1
    assert all(isinstance(row[k], float) for k in METRIC_KEYS - {"epoch"})
    assert 0 <= row["val_top1"] <= row["val_top5"] <= 100
    for name in ("last.pt", "best.pt", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert {"model", "optimizer", "scheduler", "scaler", "ema", "epoch", "args"} <= set(blob)
    capsys.readouterr()
    result = tmp_path / "val.json"
    code = validate_main(
        ["--checkpoint", str(out / "last.pt"), "--data", str(digits), "--json", str(result)]
    )
    assert code == 0
    checked = json.loads(result.read_text())
    assert checked["images"] == 10
    assert checked["top1"] == pytest.approx(row["val_top1"])
    assert checked["loss"] == pytest.approx(row["val_loss"], rel=1e-5)
    assert "top-1" in capsys.readouterr().out


def test_cli_runs_as_a_module_with_help():
    for module in ("clustervig.train", "clustervig.validate", "clustervig.demo_data"):
        done = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0 and "usage" in done.stdout, module


def test_resume_after_an_interrupted_epoch_reproduces_the_run(digits, tmp_path, monkeypatch):
    argv = [
        "--data",
        str(digits),
        *TINY,
        *PLAIN,
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--hflip",
        "0.5",
        "--scale",
        "0.5",
        "1",
    ]  # random augmentation: reseeding matters
    whole = tmp_path / "whole"
    assert _train([*argv, "--output", str(whole)]) == 0

    def interrupt(epoch, step):
        if epoch == 1 and step == 2:
            raise KeyboardInterrupt

    parts = tmp_path / "parts"
    monkeypatch.setattr(train_module, "_on_step", interrupt)
    assert _train([*argv, "--output", str(parts)]) == 130
    assert len(_metrics(parts)) == 1
    monkeypatch.setattr(train_module, "_on_step", lambda epoch, step: None)
    assert _train([*argv, "--output", str(parts), "--resume", str(parts / "last.pt")]) == 0
    a, b = _metrics(whole), _metrics(parts)
    assert [r["epoch"] for r in b] == [1, 2]
    for x, y in zip(a, b, strict=True):
        for key in ("train_loss", "val_loss", "val_top1", "lr"):
            assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-9), key
    state_a = torch.load(whole / "last.pt", weights_only=True)["model"]
    state_b = torch.load(parts / "last.pt", weights_only=True)["model"]
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=1e-5, atol=1e-6)


def test_fp16_overflowing_step_is_skipped_and_training_goes_on(digits, tmp_path, monkeypatch):
    real_loss = train_module._loss
    calls = {"n": 0}

    def overflowing_first(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * 1e38 * 1e38 if calls["n"] == 1 else loss  # inf: gradients overflow

    monkeypatch.setattr(train_module, "_loss", overflowing_first)
    row, blob = _train_one_epoch([*_one_epoch(digits), "--amp", "fp16"], tmp_path / "fp16")
    assert row["skipped_steps"] >= 1
    assert row["train_loss"] == row["train_loss"] and row["train_loss"] < float("inf")
    assert blob["scaler"]["scale"] < 65536.0  # the scaler backed off


def _error(argv: list[str], capsys) -> str:
    code = _train(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_user_mistakes_get_clear_messages(digits, tmp_path, capsys):
    out = ["--output", str(tmp_path / "o"), "--epochs", "1", *PLAIN]
    flat = tmp_path / "flat"
    (flat / "train").mkdir(parents=True)
    shutil.copy(next((digits / "train" / "3").iterdir()), flat / "train" / "a.png")
    assert "no class folders" in _error(["--data", str(flat), *out], capsys)
    assert "no 'train' folder" in _error(["--data", str(tmp_path), *out], capsys)
    empty = tmp_path / "empty"
    shutil.copytree(digits, empty)
    for image in (empty / "val" / "7").iterdir():
        image.unlink()
    assert "class '7'" in _error(["--data", str(empty), *out], capsys)
    from clustervig.data import check_image_folder

    (empty / "val" / "7").rmdir()
    (empty / "train" / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    assert check_image_folder(empty) == [str(d) for d in range(10)]
    with pytest.raises(SystemExit) as exit_info:
        _train(["--data", str(digits), "--model", "cvig_huge", *out])
    assert exit_info.value.code == 2
    assert "--model" in capsys.readouterr().err


def test_a_corrupt_image_is_skipped_and_counted(digits, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(digits, data)
    (data / "train" / "0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="broken.png"):
        code = _train(
            [
                *_one_epoch(data),
                "--output",
                str(out),
            ]
        )
    assert code == 0
    assert _metrics(out)[0]["skipped_images"] == 1


def test_fine_tune_with_another_class_count_and_size(digits, tmp_path, capsys):
    source = tmp_path / "src"
    assert (
        _train(
            [
                *_one_epoch(digits),
                "--output",
                str(source),
            ]
        )
        == 0
    )
    subset = tmp_path / "five"
    for split in ("train", "val"):
        for digit in range(5):
            shutil.copytree(digits / split / str(digit), subset / split / str(digit))
    argv = [
        "--data",
        str(subset),
        "--model",
        "cvig_ti",
        "--model-args",
        "depth=2",
        "channels=32",
        "--img-size",
        "48",
        *PLAIN,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--pretrained",
        str(source / "last.pt"),
        "--output",
        str(tmp_path / "ft"),
    ]
    assert _train(argv) == 0
    err = capsys.readouterr().err
    assert "classifier re-initialised" in err
    state = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)["model"]
    assert state["head.head.weight"].shape[0] == 5
    assert state["pos_embed"].shape[-1] == 6  # 48 px at 8 px a node


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(digits, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    common = ["--data", str(digits), *TINY, *PLAIN, "--epochs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "clustervig.train",
            *common,
            "--batch-size",
            "8",
            "--output",
            str(one),
        ],
        check=True,
        env=env,
        timeout=600,
    )
    two = tmp_path / "two"
    subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "clustervig.train",
            *common,
            "--batch-size",
            "4",
            "--output",
            str(two),
        ],
        check=True,
        env=env,
        timeout=600,
    )
    (a,), (b,) = _metrics(one), _metrics(two)
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    # Biases in front of a batch norm get gradients that are rounding noise (the norm cancels
    # them), which AdamW scales up to full steps; they shift the running means a little, so the
    # eval-mode loss agrees less tightly than the training loss and the weights.
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-2)
    state_a = torch.load(one / "last.pt", weights_only=True)["model"]
    state_b = torch.load(two / "last.pt", weights_only=True)["model"]
    for key in (k for k in state_a if state_a[k].dim() > 1):
        torch.testing.assert_close(state_a[key], state_b[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_distillation_from_a_checkpoint_teacher_with_ema_and_checkpointing(
    digits, tmp_path, mode, capsys
):
    teacher = tmp_path / "teacher"
    common = _one_epoch(digits)
    assert _train([*common, "--output", str(teacher)]) == 0
    student = tmp_path / "student"
    argv = [
        *common,
        "--teacher",
        str(teacher / "last.pt"),
        "--distillation",
        mode,
        "--ema",
        "--grad-checkpointing",
    ]
    row, blob = _train_one_epoch(argv, student)
    assert 0 <= row["ema_val_top1"] <= 100 and row["train_loss"] < float("inf")
    assert blob["ema"] is not None
    capsys.readouterr()
    assert (
        validate_main(["--checkpoint", str(student / "last.pt"), "--data", str(digits), "--ema"])
        == 0
    )


def test_distillation_needs_a_teacher(digits, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _train(["--data", str(digits), "--distillation", "hard", "--output", str(tmp_path)])
    assert "--teacher" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--resume", "--pretrained", "--teacher"])
def test_a_damaged_checkpoint_is_reported(digits, tmp_path, flag, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    err = _error(
        [
            "--data",
            str(digits),
            *TINY,
            *PLAIN,
            "--epochs",
            "1",
            flag,
            str(bad),
            "--output",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert flag in err and "bad.pt" in err


def test_batch_norm_recalibration_averages_training_batches():
    from torch import nn

    from clustervig.train import recalibrate_batch_norm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).eval()
    model[1].running_mean.fill_(100.0)  # stale statistics
    batches = [(torch.randn(6, 3, 5, 5) + i, torch.zeros(6, dtype=torch.long), 0) for i in range(3)]
    recalibrate_batch_norm(model, batches, torch.device("cpu"), None, batches=2)
    with torch.no_grad():
        means = [model[0](images).mean(dim=(0, 2, 3)) for images, _, _ in batches[:2]]
    torch.testing.assert_close(model[1].running_mean, (means[0] + means[1]) / 2)
    assert model[1].momentum == 0.1 and model[1].num_batches_tracked == 2
    with pytest.raises(SystemExit):
        train_module._parse(["--data", "d", "--output", "o", "--bn-recalibrate", "-1"])
