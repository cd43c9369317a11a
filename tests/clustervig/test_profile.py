"""``python -m clustervig.profile``: the share of every DEGC step in a forward."""

from __future__ import annotations

import json

import torch

from clustervig import create_model
from clustervig.profile import main, profile_forward


def test_profile_attributes_every_degc_step():
    torch.manual_seed(0)
    model = create_model("cvig_ti", img_size=64).eval()
    steps = profile_forward(model, torch.randn(2, 3, 64, 64), repeats=1)
    for step in ("k-means", "partition", "k-NN", "permutes", "aggregation", "convolutions"):
        assert steps[step] > 0, step
    parts = sum(v for k, v in steps.items() if k != "forward")
    assert abs(parts - steps["forward"]) <= 0.05 * steps["forward"] + 1.0


def test_profile_cli(tmp_path, capsys):
    out = tmp_path / "profile.json"
    args = ["--batch-size", "1", "--img-size", "64", "--repeats", "1", "--json", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "k-means" in text and "graph ops" in text and "%" in text
    data = json.loads(out.read_text())
    assert data["graph_ops_ms"] > 0 and data["forward_ms"] >= data["graph_ops_ms"]
