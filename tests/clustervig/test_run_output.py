"""Training output that cannot be clobbered: ``--output`` checked before any work, locked for one
run, an earlier run kept unless ``--resume`` / ``--overwrite``, and every refusal one line on
stderr with exit status 2 (the CLI in a subprocess, as a user runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clustervig import run_files
from clustervig.demo_data import write_digits

from .test_train import PLAIN, TINY

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    write_digits(root, per_class=5)
    return root


def _argv(data: Path, out: Path, *extra: str, epochs: int = 1) -> list[str]:
    return [
        sys.executable, "-m", "clustervig.train", "--data", str(data), *TINY, *PLAIN,
        "--epochs", str(epochs), "--batch-size", "8", "--output", str(out), *extra,
    ]  # fmt: skip


def _cli(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _refused(done: subprocess.CompletedProcess, *phrases: str) -> str:
    """A user's mistake: exit status 2, one line on stderr, no traceback."""
    err = done.stderr.strip()
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for phrase in phrases:
        assert phrase in err, err
    return err


def _snapshot(out: Path) -> dict[str, bytes]:
    return {
        name: (out / name).read_bytes() for name in run_files.RUN_FILES if (out / name).exists()
    }


def test_a_second_run_into_the_same_output_refuses_and_the_first_completes(digits, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(
        _argv(digits, out, epochs=2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    lock = out / ".clustervig-train.lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text().startswith("pid")):
        assert first.poll() is None and time.monotonic() < deadline, "the first run did not start"
        time.sleep(0.05)
    second = _cli(_argv(digits, out, "--overwrite"))
    _refused(second, "in use by another training run", f"pid {first.pid}")
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    metrics = run_files.read_metrics(out / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert {"last.pt", "best.pt", "curves.png"} <= {p.name for p in out.iterdir()}
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_an_earlier_run_is_kept_unless_resumed_or_overwritten(digits, tmp_path):
    out = tmp_path / "run"
    assert _cli(_argv(digits, out)).returncode == 0
    before = _snapshot(out)
    _refused(_cli(_argv(digits, out)), "already holds a run", "--resume", "--overwrite")
    assert _snapshot(out) == before
    done = _cli(_argv(digits, out, "--overwrite", "--seed", "1"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert _snapshot(out)["last.pt"] != before["last.pt"]
    blob = torch.load(out / "last.pt", weights_only=True)
    assert blob["model_config"]["model"] == "cvig_ti"
    assert blob["model_config"]["options"]["grid"] == 4  # the resolved options, not the flags


@pytest.mark.parametrize("where", ["a file", "under a file", "proc"])
def test_an_unwritable_output_is_one_line_before_any_work(digits, tmp_path, where):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = {"a file": blocker, "under a file": blocker / "run", "proc": Path("/proc/clustervig")}
    _refused(_cli(_argv(digits, out[where])), "--output", "cannot write")


def test_a_run_that_fails_leaves_no_empty_output_directory(tmp_path):
    out = tmp_path / "run"
    _refused(_cli(_argv(tmp_path / "no-data", out)), "--data")
    assert not out.exists()


def test_resume_refuses_other_model_options_and_another_variant_in_one_line(digits, tmp_path):
    out = tmp_path / "run"
    assert _cli(_argv(digits, out)).returncode == 0
    last = str(out / "last.pt")
    changed = _argv(digits, out, "--resume", last, epochs=2)
    changed[changed.index("channels=32")] = "channels=48"
    _refused(_cli(changed), "--resume", "other model options", "channels=32 -> 48")
    variant = _argv(digits, out, "--resume", last, epochs=2)
    variant[variant.index("cvig_ti")] = "cvig_s"
    _refused(_cli(variant), "--resume", "--model cvig_ti -> cvig_s")


def test_a_run_in_which_no_image_could_be_read_fails(digits, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(digits, data)
    for image in (data / "train").rglob("*.png"):
        image.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "run"
    done = _cli(_argv(data, out))
    assert done.returncode == 2 and "trained on no image" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()


def test_a_failed_write_leaves_neither_a_temporary_file_nor_a_half_checkpoint(
    tmp_path, monkeypatch
):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"the previous epoch")

    def full_disk(blob, path):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        run_files.write_epoch(out, {"epoch": 2}, True, [])
    assert (out / "last.pt").read_bytes() == b"the previous epoch"
    assert sorted(p.name for p in out.iterdir()) == ["last.pt"]
    assert os.listdir(out) == ["last.pt"]
