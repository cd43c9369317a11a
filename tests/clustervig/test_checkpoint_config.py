"""Checkpoints that say which model they hold, and ``strict=False`` that loosens only the head.

The README's digits demo trains ``cvig_ti`` at 32 px, for which training picks ``grid=4``: its
checkpoint must rebuild that model in ``create_model``, ``convert``, ``export`` and ``visualize``
without the user guessing the options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clustervig import create_model, load_checkpoint
from clustervig import train as train_module
from clustervig.__main__ import main as clustervig_main
from clustervig.demo_data import write_digits
from clustervig.visualize import main as visualize_main

from .test_train import PLAIN, TINY


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """``best.pt`` of one epoch of the tiny demo model at 32 px (grid 4 by training's rule)."""
    root = tmp_path_factory.mktemp("demo")
    write_digits(root / "data", per_class=5)
    out = root / "run"
    argv = ["--data", str(root / "data"), *TINY, *PLAIN, "--epochs", "1", "--batch-size", "8"]
    assert train_module.main([*argv, "--output", str(out)]) == 0
    return out / "best.pt"


def test_the_checkpoint_rebuilds_its_model_from_the_name_alone(trained):
    model = create_model("cvig_ti", pretrained=str(trained))
    assert model.config.grid == 4 and model.config.depth == 2 and model.num_classes == 10
    same = create_model("cvig_ti", num_classes=10, img_size=32, pretrained=str(trained))
    assert torch.equal(same.head.head.weight, model.head.head.weight)
    x = torch.randn(2, 3, 32, 32)
    assert model.eval()(x).shape == (2, 10)


def test_an_option_that_contradicts_the_checkpoint_is_named(trained):
    with pytest.raises(ValueError, match=r"channels=48 \(the checkpoint's: 32\)"):
        create_model("cvig_ti", channels=48, pretrained=str(trained))
    with pytest.raises(ValueError, match="holds cvig_ti, not cvig_s"):
        create_model("cvig_s", pretrained=str(trained))
    # a training-only option is the user's to change
    create_model("cvig_ti", drop_path_rate=0.1, pretrained=str(trained))


def test_convert_export_and_visualize_need_no_model_args(trained, tmp_path, capsys):
    converted = tmp_path / "demo.safetensors"
    assert clustervig_main(["convert", str(trained), str(converted)]) == 0
    again = create_model("cvig_ti", pretrained=str(converted))  # the metadata says which model
    assert again.config.grid == 4
    onnx = tmp_path / "demo.onnx"
    assert clustervig_main(["export", "--checkpoint", str(trained), "--out", str(onnx)]) == 0
    assert onnx.is_file() and "(any, 3, 32, 32)" in capsys.readouterr().out
    image = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(image)
    png = tmp_path / "graph.png"
    assert visualize_main([str(image), "--checkpoint", str(trained), "--out", str(png)]) == 0
    assert png.is_file()
    assert clustervig_main(["export", "--checkpoint", str(trained), "--img-size", "64"]) == 2
    assert "img_size=64 (the checkpoint's: 32)" in capsys.readouterr().err


def test_convert_of_a_file_that_does_not_record_its_model_asks_for_it(tmp_path, capsys):
    bare = tmp_path / "bare.pt"
    torch.save(create_model("cvig_ti").state_dict(), bare)
    assert clustervig_main(["convert", str(bare), str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_strict_false_loosens_the_head_only():
    source = create_model("cvig_ti", num_classes=10)
    target = create_model("cvig_ti", num_classes=5)
    head = target.head.head.weight.clone()
    report = load_checkpoint(target, source.state_dict(), strict=False)
    assert torch.equal(target.stem.convs[0][0].weight, source.stem.convs[0][0].weight)
    assert torch.equal(target.head.head.weight, head)  # another class count: kept as built
    assert report.layout == "clustervig"

    with pytest.raises(ValueError, match=r"loosens only the classifier.*missing .*in all\)"):
        load_checkpoint(create_model("cvig_ti"), create_model("pvig_ti").state_dict(), strict=False)

    state = source.state_dict()
    key = "stem.convs.0.0.weight"
    state[key] = torch.zeros(3, *state[key].shape[1:])  # a wrong-shaped backbone tensor
    with pytest.raises(ValueError, match="stem.convs.0.0.weight"):
        load_checkpoint(create_model("cvig_ti", num_classes=10), state, strict=False)
    # what the user names may be loose too
    load_checkpoint(create_model("cvig_ti", num_classes=10), state, strict=False, loose=("stem.",))
