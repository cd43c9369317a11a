"""What a new user runs into: sizes, empty batches, dtypes, names and overrides."""

from __future__ import annotations

import pytest
import torch

from clustervig import CViG, create_model
from clustervig.__main__ import main
from clustervig.degc import DEGC


@pytest.mark.parametrize("size", [256, 288, 320, 448])
def test_cvig_takes_any_size_its_stem_reduces(size):
    model = create_model("cvig_ti", img_size=size)
    assert model.config.grid == size // 16
    assert model.pos_embed.shape[-1] == size // 16


def test_cvig_forward_at_256_px():
    model = create_model("cvig_ti", img_size=256, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 256, 256)).shape == (1, 7)


def test_a_size_the_stem_cannot_reduce_says_which_work():
    with pytest.raises(ValueError, match="'img_size' must be a positive multiple of 16"):
        create_model("cvig_ti", img_size=250)


@pytest.mark.parametrize("name", ["cvig_ti", "pvig_ti", "ivig_ti"])
def test_an_empty_batch_gives_an_empty_result(name):
    model = create_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(0, 3, 224, 224)).shape == (0, 1000)


def test_degc_on_an_empty_batch():
    layer = DEGC(8, k=4, num_clusters=2)
    assert layer(torch.randn(0, 8, 4, 4)).shape == (0, 16, 4, 4)


@pytest.mark.parametrize("name", ["cvig_ti", "pvig_ti", "ivig_ti"])
def test_a_float64_input_on_a_float32_model_is_a_clear_error(name):
    model = create_model(name).eval()
    with pytest.raises(ValueError, match="'x' has dtype float64 but the model's parameters"):
        model(torch.randn(1, 3, 224, 224, dtype=torch.float64))


def test_k_bounds_name_the_argument_passed():
    with pytest.raises(ValueError, match="'k_max' must be an int in \\[1, 32\\], got 40"):
        create_model("cvig_ti", k_max=40)
    with pytest.raises(ValueError, match="'k_min'"):
        create_model("cvig_ti", k_min=12, k_max=10)


@pytest.mark.parametrize("name", ["cvig_ti", "pvig_ti", "ivig_ti"])
def test_unknown_overrides_list_the_valid_ones(name):
    with pytest.raises(ValueError, match="unknown option num_clases; valid options: .*num_classes"):
        create_model(name, num_clases=10)


def test_names_are_checked_and_case_insensitive():
    with pytest.raises(ValueError, match="'name' must be a model name"):
        create_model(None)
    assert CViG.from_variant("CViG-Ti").config == create_model("CViG-Ti").config
    assert CViG.from_variant("CVIG_B†").config.grid == 28
    assert create_model("cvig_ti", local_update="GIN").config.local_update == "gin"
    assert DEGC(8, local_update="EdgeConv").local_update.__class__.__name__ == "GEdgeConv"


def test_cli_reports_bad_sizes_without_a_traceback(capsys):
    assert main(["--models", "cvig_ti", "--img-size", "100"]) == 2
    err = capsys.readouterr().err
    assert "multiples of 16" in err and "Traceback" not in err


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("clustervig ")
