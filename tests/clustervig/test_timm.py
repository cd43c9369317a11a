"""Every registered model, tested the way timm tests its own models (cfg keys, shapes against
``pool_size``, ``reset_classifier``, forward/backward, ``features_only``, FX extraction)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch
from timm.models import create_feature_extractor

import clustervig
from clustervig import list_models

ALL_MODELS = list_models()
#: one small model per family: forward/backward and feature tests stay fast on a CPU
SMALL_MODELS = ["cvig_ti", "pvig_ti", "ivig_ti"]
CFG_KEYS = ("input_size", "pool_size", "crop_pct", "interpolation", "mean", "std")


def test_every_model_is_in_timms_registry():
    assert set(timm.list_models("cvig*")) == {"cvig_ti", "cvig_s", "cvig_b", "cvig_b_hr"}
    assert set(ALL_MODELS) <= set(timm.list_models())


@pytest.mark.parametrize("order", ["clustervig first", "timm first"])
def test_registration_in_either_import_order(order):
    first, second = (
        ("clustervig", "timm") if order == "clustervig first" else ("timm", "clustervig")
    )
    code = (
        f"import {first}, {second}, torch\n"
        "m = timm.create_model('cvig_ti', num_classes=10, img_size=64).eval()\n"
        "print(tuple(m(torch.randn(1, 3, 64, 64)).shape))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip() == "(1, 10)"


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_MODELS)
def test_default_cfg_matches_the_model(name):
    """timm's test_model_default_cfgs: the cfg describes the model that is built."""
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    for key in CFG_KEYS:
        assert key in cfg, key
    registry_cfg = timm.models.get_pretrained_cfg(name).to_dict()
    for key in ("input_size", "pool_size"):
        assert tuple(registry_cfg[key]) == tuple(cfg[key]), key
    for key in ("first_conv", "classifier", "mean", "std"):
        assert registry_cfg[key] == cfg[key], key
    first = model.get_submodule(cfg["first_conv"])
    assert first.in_channels == cfg["input_size"][0]
    classifier = model.get_submodule(cfg["classifier"])
    assert classifier is model.get_classifier()
    assert classifier.out_channels == model.num_classes == cfg["num_classes"]
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (1, model.num_features, *cfg["pool_size"])
        model.reset_classifier(0)
        assert model(x).shape == (1, model.head_hidden_size)
        model.reset_classifier(0, "")
        assert model(x).shape == features.shape


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_forward_backward_and_classifier_reset(name):
    torch.manual_seed(0)
    size = 224 if name == "pvig_ti" else 128  # Pyramid ViG's last stage needs k * dilation nodes
    model = timm.create_model(name, num_classes=7, img_size=size)
    x = torch.randn(2, 3, size, size)
    outputs = model(x)  # ClusterViG in training mode: (logits, distillation logits)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    assert all(o.shape == (2, 7) for o in outputs)
    sum(o.logsumexp(1).mean() for o in outputs).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
    model.reset_classifier(3)
    assert model.eval()(x).shape == (2, 3)
    assert timm.create_model(name, num_classes=0, img_size=size).eval()(x).shape == (
        2,
        model.head_hidden_size,
    )
    unpooled = timm.create_model(name, global_pool="", img_size=size).eval()(x)
    assert unpooled.shape[:2] == (2, model.num_features)


@pytest.mark.parametrize("name", SMALL_MODELS)
@pytest.mark.parametrize("size", [224, 256])
def test_features_only_gives_strides_4_8_16_32(name, size):
    model = timm.create_model(name, features_only=True, out_indices=(0, 1, 2, 3)).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        maps = model(torch.randn(1, 3, size, size))
    assert [m.shape[1] for m in maps] == model.feature_info.channels()
    assert [size // m.shape[-1] for m in maps] == [4, 8, 16, 32]
    picked = timm.create_model(name, features_only=True, out_indices=(2, 3))
    assert picked.feature_info.reduction() == [16, 32]


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_fx_feature_extraction_traces_around_the_graph_layers(name):
    model = timm.create_model(name).eval()
    taps = model.feature_info.module_name()
    extractor = create_feature_extractor(model, return_nodes=taps)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        got = extractor(x)
        _, expected = model.forward_intermediates(x)
    for tap, want in zip(taps, expected, strict=True):
        torch.testing.assert_close(got[tap], want)


def test_pretrained_needs_a_local_file(tmp_path):
    with pytest.raises(ValueError, match="no pretrained weights are downloaded"):
        timm.create_model("cvig_ti", pretrained=True)
    source = clustervig.create_model("cvig_ti", num_classes=5, img_size=64)
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    loaded = timm.create_model(
        "cvig_ti",
        pretrained=True,
        pretrained_cfg_overlay={"file": str(path)},
        num_classes=5,
        img_size=64,
    )
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    via_timm_loader = timm.create_model(
        "cvig_ti", checkpoint_path=str(path), num_classes=5, img_size=64
    )
    torch.testing.assert_close(via_timm_loader.pos_embed, source.pos_embed)


def test_unknown_feature_class_is_a_clear_error():
    with pytest.raises(ValueError, match="feature_cls"):
        timm.create_model("cvig_ti", features_only=True, feature_cls="hook")


def test_timm_factory_device_dtype_and_unknown_arguments():
    """timm's factory passes ``device`` / ``dtype`` (every tensor made there) and expects an
    unknown argument to raise ``TypeError`` (still the ``ValueError`` the CLIs report)."""
    model = timm.create_model("pvig_ti", device="meta", dtype=torch.float64)
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.device.type == "meta" for t in tensors)
    assert all(t.dtype == torch.float64 for t in tensors if t.is_floating_point())
    with pytest.raises(TypeError, match="not_an_option"):
        timm.create_model("cvig_ti", not_an_option=1)
    with pytest.raises(ValueError, match="not_an_option"):
        timm.create_model("cvig_ti", not_an_option=1)
    model.reset_classifier(7)  # a new classifier in the model's device and dtype
    assert model.get_classifier().weight.dtype == torch.float64
    assert model.get_classifier().weight.device.type == "meta"


def test_save_for_hf_layout_loads_back_from_a_local_directory(tmp_path):
    """timm's Hugging Face layout (``save_for_hf``: config.json naming the architecture, and the
    weights) read back with ``local-dir:``, no network: the same model and outputs."""
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("cvig_ti", num_classes=10, img_size=64).eval()
    save_for_hf(model, tmp_path / "hf")
    assert (tmp_path / "hf" / "config.json").is_file()
    again = timm.create_model(f"local-dir:{tmp_path / 'hf'}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
    assert again.pretrained_cfg["architecture"] == "cvig_ti"
