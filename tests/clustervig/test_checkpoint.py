"""Checkpoints in the ClusterViG authors' and the official ViG layouts load into our models.

The foreign state dicts are written here from the key maps of ``shared/REFERENCE.md``
(sections 1.10 and 2.1-2.3), independently of the converter: same weights under the other
repositories' names and shapes.
"""

from __future__ import annotations

import re

import pytest
import torch

from clustervig import create_model
from clustervig.checkpoint import detect_layout, load_checkpoint


def _flat_stem(key: str, prefix: str) -> str:
    """Ours ``{prefix}{layer}.{0|1}.`` -> theirs ``stem.convs.{3 layer + 0|1}.``."""
    match = re.match(rf"^{re.escape(prefix)}(\d+)\.(0|1)\.(.+)$", key)
    return f"stem.convs.{3 * int(match.group(1)) + int(match.group(2))}.{match.group(3)}"


def authors_cvig_state(model) -> dict:
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("stem.convs."):
            key = _flat_stem(key, "stem.convs.")
        key = key.replace(".cpe.", ".cpe.pe.")
        key = key.replace(
            ".degc.local_update.mlp.0.", ".graphconv.layer.nn_vertex.layer.lins.0.head_list.0."
        )
        key = key.replace(
            ".degc.local_update.mlp.1.", ".graphconv.layer.nn_vertex.layer.norms.0.module."
        )
        key = key.replace(".degc.global_update.", ".graphconv.layer.nn_centroids.layer.layer.")
        key = re.sub(r"^head\.prediction\.", "prediction.", key)
        key = re.sub(r"^head\.(head|dist_head)\.", r"\1.", key)
        if key.endswith("nn_vertex.layer.lins.0.head_list.0.weight"):
            value = value.reshape(value.shape[1], -1)  # PyG Linear [2C, 3C]
        if key.endswith("nn_centroids.layer.layer.att"):
            value = value.reshape(1, 1, -1)  # [1, 1, C]
        if key in ("head.weight", "dist_head.weight"):
            value = value.flatten(1)  # as a Linear [1000, 1024]
        out[key] = value.clone()
    return out


def official_vig_state(model, pyramid: bool) -> dict:
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("stem."):
            key = _flat_stem(key, "stem.")
        key = key.replace(".graph_conv.nn.", ".graph_conv.gconv.nn.")
        key = key.replace("head.prediction.1.", "prediction.0.")
        key = key.replace("head.prediction.2.", "prediction.1.")
        key = key.replace("head.head.", "prediction.4.")
        if pyramid:
            down = re.match(
                r"^backbone\.(\d+)\.(0|1)\.(weight|bias|running_mean|running_var|"
                r"num_batches_tracked)$",
                key,
            )
            if down:  # a downsampler: Sequential(conv, BN) named .conv
                key = f"backbone.{down.group(1)}.conv.{down.group(2)}.{down.group(3)}"
        else:
            block = re.match(r"^backbone\.(\d+)\.(.+)$", key)
            if block:
                i = int(block.group(1))
                key = f"backbone.{i // 2}.{i % 2}.{block.group(2)}"
        out[key] = value.clone()
    return out


def _same_logits(source, target):
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(x), source.eval()(x), atol=1e-5, rtol=1e-5)


def test_clustervig_authors_layout_loads_strictly():
    torch.manual_seed(0)
    source = create_model("cvig_ti")
    for p in source.parameters():  # not the init: every tensor must really be copied
        p.data.normal_(0, 0.02)
    state = authors_cvig_state(source)
    assert "backbone.0.graphconv.layer.nn_centroids.layer.layer.att" in state
    assert state["backbone.0.graphconv.layer.nn_centroids.layer.layer.att"].shape == (1, 1, 192)
    assert state["backbone.0.graphconv.layer.nn_vertex.layer.lins.0.head_list.0.weight"].shape == (
        384,
        576,
    )
    assert detect_layout(state) == "clustervig-authors"
    target = create_model("cvig_ti")
    report = load_checkpoint(target, state)
    assert report.layout == "clustervig-authors" and not report.missing and not report.unexpected
    _same_logits(source, target)


@pytest.mark.parametrize("name,pyramid", [("pvig_ti", True), ("ivig_ti", False)])
def test_official_vig_layouts_load_strictly(name, pyramid, tmp_path):
    torch.manual_seed(0)
    source = create_model(name)
    for p in source.parameters():
        p.data.normal_(0, 0.02)
    state = official_vig_state(source, pyramid)
    assert "prediction.4.weight" in state
    if pyramid:
        assert "backbone.2.conv.0.weight" in state and "backbone.0.0.relative_pos" in state
    path = tmp_path / "official.pth"
    torch.save({"model": state}, path)
    target = create_model(name)
    report = load_checkpoint(target, path)
    assert report.layout == "vig-official" and not report.missing and not report.unexpected
    assert all(k.endswith("relative_pos") for k in report.dropped)
    _same_logits(source, target)


def test_our_own_checkpoints_round_trip_through_safetensors(tmp_path):
    from clustervig.__main__ import main

    torch.manual_seed(0)
    source = create_model("cvig_ti")
    authors = tmp_path / "authors.pth"
    torch.save(authors_cvig_state(source), authors)
    converted = tmp_path / "cvig_ti.safetensors"
    assert main(["convert", str(authors), str(converted), "--model", "cvig_ti"]) == 0
    target = create_model("cvig_ti", pretrained=str(converted))
    _same_logits(source, target)


def test_mismatches_are_reported_not_crashes(tmp_path):
    model = create_model("cvig_s")  # grouped local-update MLP
    dense = authors_cvig_state(create_model("cvig_s", groups=1))
    with pytest.raises(ValueError, match="create the model with groups=1"):
        load_checkpoint(model, dense)
    with pytest.raises(ValueError, match="unrecognised checkpoint keys"):
        load_checkpoint(model, {"foo.weight": torch.zeros(1)})
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_checkpoint(model, broken)
    other = create_model("cvig_ti").state_dict()
    with pytest.raises(ValueError, match="pos_embed has shape"):
        load_checkpoint(model, other)
    report = load_checkpoint(create_model("cvig_ti", distillation=False), other)
    assert report.dropped and all(k.startswith("head.dist_head.") for k in report.dropped)
    with pytest.raises(ValueError, match="does not fit the model.*unexpected: backbone.99"):
        load_checkpoint(create_model("cvig_ti"), {**other, "backbone.99.weight": torch.zeros(1)})
    ten_classes = create_model("cvig_s", num_classes=10)
    report = load_checkpoint(ten_classes, create_model("cvig_s").state_dict(), strict=False)
    assert any(k.startswith("head.head") for k in report.missing)
