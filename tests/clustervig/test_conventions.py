"""timm's model conventions on every family, tested the way timm's own model tests do."""

from __future__ import annotations

import re

import pytest
import torch

from clustervig import CViG, create_model

MODELS = ["cvig_ti", "pvig_ti", "ivig_ti"]
CFG_KEYS = {
    "input_size",
    "pool_size",
    "crop_pct",
    "interpolation",
    "mean",
    "std",
    "first_conv",
    "classifier",
    "num_classes",
}


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    torch.manual_seed(0)
    return create_model(request.param).eval()


def test_pretrained_cfg_and_feature_shapes(model):
    cfg = model.pretrained_cfg
    assert CFG_KEYS <= set(cfg) and model.default_cfg == cfg
    assert cfg["num_classes"] == model.num_classes == 1000
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
    assert features.shape == (1, model.num_features, *cfg["pool_size"])
    assert pooled.shape == (1, model.head_hidden_size) and logits.shape == (1, 1000)
    first_conv = dict(model.named_modules())[cfg["first_conv"]]
    assert isinstance(first_conv, torch.nn.Conv2d) and first_conv.in_channels == 3
    classifier = dict(model.named_modules())[cfg["classifier"]]
    assert classifier is model.get_classifier()


@pytest.mark.parametrize("name", MODELS)
def test_num_classes_zero_and_reset_classifier(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=0).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert model(x).shape == (2, model.head_hidden_size)
        model.reset_classifier(10)
        assert model.num_classes == 10 and model(x).shape == (2, 10)
        assert model.pretrained_cfg["num_classes"] == 10
        model.reset_classifier(0, global_pool="")
        assert model(x).shape == (2, model.num_features, *model.pretrained_cfg["pool_size"])
    with pytest.raises(ValueError, match="'global_pool'"):
        model.reset_classifier(5, global_pool="max")
    with pytest.raises(ValueError, match="'num_classes'"):
        model.reset_classifier(-1)


@pytest.mark.parametrize("name", MODELS)
def test_weight_decay_and_parameter_groups(name):
    model = create_model(name)
    names = [n for n, _ in model.named_parameters()]
    assert model.no_weight_decay() <= set(names)
    groups = model.group_matcher()
    stem = [n for n in names if re.match(groups["stem"], n)]
    blocks = [n for n in names if re.match(groups["blocks"], n)]
    assert stem and blocks and not set(stem) & set(blocks)
    assert all(n.startswith("head.") for n in set(names) - set(stem) - set(blocks))


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = CViG(channels=16, depth=2, grid=4, img_size=32, num_clusters=2, num_classes=5)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        torch.manual_seed(1)  # BatchNorm and DropPath see the same randomness
        logits, distilled = model(x)
        (logits.square().mean() + distilled.mean()).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", [224, 256])
def test_features_only_gives_four_maps_at_strides_4_to_32(name, size):
    torch.manual_seed(0)
    model = create_model(name, features_only=True, img_size=size).eval()
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    with torch.no_grad():
        maps = model(torch.randn(2, 3, size, size))
    assert len(maps) == 4
    for fmap, info in zip(maps, model.feature_info, strict=True):
        assert fmap.shape == (
            2,
            info["num_chs"],
            size // info["reduction"],
            size // info["reduction"],
        )
    subset = create_model(name, features_only=True, out_indices=(1, 3))
    assert [f["reduction"] for f in subset.feature_info] == [8, 32]


def test_features_only_trains_end_to_end():
    torch.manual_seed(0)
    model = create_model("cvig_ti", features_only=True, img_size=64).train()
    maps = model(torch.randn(2, 3, 64, 64))
    sum(m.square().mean() for m in maps).backward()
    assert all(p.grad is not None for p in model.necks.parameters())


def test_forward_intermediates_and_feature_info(model):
    info = model.feature_info
    assert len(info) == 4
    modules = dict(model.named_modules())
    assert all(f["module"] in modules for f in info)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        features = model.forward_features(x)
    torch.testing.assert_close(final, features)
    torch.testing.assert_close(maps[-1], features)
    assert [m.shape[1] for m in maps] == [f["num_chs"] for f in info]
    assert [224 // m.shape[-1] for m in maps] == [f["reduction"] for f in info]
    torch.testing.assert_close(last_two[0], maps[2])
    with pytest.raises(ValueError, match="'indices'"):
        model.forward_intermediates(x, indices=[7])


def test_bad_out_indices_are_a_clear_error():
    with pytest.raises(ValueError, match="'out_indices'"):
        create_model("pvig_ti", features_only=True, out_indices=(0, 4))


def test_forward_intermediates_takes_timms_arguments(model):
    """timm's signature: ``norm`` (no final norm here: no change), ``stop_early``,
    ``output_fmt`` NCHW / NHWC, negative indices; anything else is a clear error."""
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        early, first = model.forward_intermediates(x, indices=[0], norm=True, stop_early=True)
        nhwc = model.forward_intermediates(
            x, indices=[-1], output_fmt="NHWC", intermediates_only=True
        )
    torch.testing.assert_close(early, first[0])
    torch.testing.assert_close(first[0], maps[0])
    torch.testing.assert_close(nhwc[0], maps[-1].permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="'output_fmt'"):
        model.forward_intermediates(x, output_fmt="NLC")
    with pytest.raises(ValueError, match="'indices'"):
        model.forward_intermediates(x, indices=0)


@pytest.mark.parametrize("name", MODELS)
def test_prune_intermediate_layers_keeps_the_taps_and_trains(name):
    """Pruned to tap 1: its map is the unpruned model's, the blocks after it and (by default)
    the head are gone, forward_features ends at the tap, every remaining parameter trains; a
    classifier cannot come back on a removed head."""
    import copy

    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
        pruned = copy.deepcopy(model)
        taken = pruned.prune_intermediate_layers([1])
        assert taken == [1] and len(pruned.feature_info) == 2
        torch.testing.assert_close(pruned.forward_intermediates(x, indices=taken)[1][0], taps[1])
        torch.testing.assert_close(pruned.forward_features(x), taps[1])
        torch.testing.assert_close(pruned(x), taps[1])  # no head: the unpooled features
    assert pruned.num_features == taps[1].shape[1]
    assert len(list(pruned.parameters())) < len(list(model.parameters()))
    pruned.train()
    pruned.forward_features(torch.randn(2, 3, 224, 224)).sum().backward()
    assert all(p.grad is not None for p in pruned.parameters())
    with pytest.raises(ValueError, match="removed"):
        pruned.reset_classifier(10)
    kept = copy.deepcopy(model)
    kept.prune_intermediate_layers([3], prune_head=False)
    with torch.no_grad():
        torch.testing.assert_close(kept(x), model(x))


def test_scripting_is_a_clear_error():
    with pytest.raises(RuntimeError, match="torch.compile"):
        torch.jit.script(create_model("cvig_ti", img_size=64))


def test_min_input_size_is_declared_and_enforced():
    """The smallest input each model takes (PViG's coarsest graph needs 45 keys at stride 32:
    224 px); below it a clear error; the feature pyramid's also gives its stride-32 level a
    pixel (CViG-B† runs at 24 px, its pyramid at 32)."""
    for name, side in [("cvig_ti", 32), ("pvig_ti", 224), ("ivig_ti", 128), ("cvig_b_hr", 24)]:
        with torch.device("meta"):
            model = create_model(name)
        assert model.pretrained_cfg["min_input_size"] == (3, side, side)
    model = create_model("pvig_ti").eval()
    with pytest.raises(ValueError, match="at least 224x224"):
        model(torch.randn(1, 3, 192, 192))
    pyramid = create_model("cvig_b_hr", features_only=True)
    assert pyramid.pretrained_cfg["min_input_size"] == (3, 32, 32)
    assert pyramid.default_cfg is not None and pyramid.pretrained_cfg["input_size"] == (3, 224, 224)
