"""``python -m clustervig.profile``: the share of every DEGC step in a forward."""

from __future__ import annotations

import json

import torch

from clustervig import create_model
from clustervig.profile import main, profile_forward, time_graph_ops


def test_profile_attributes_every_degc_step():
    torch.manual_seed(0)
    model = create_model("cvig_ti", img_size=64).eval()
    steps = profile_forward(model, torch.randn(2, 3, 64, 64), repeats=1)
    for step in ("k-means", "partition", "k-NN", "aggregation", "convolutions"):
        assert steps[step] > 0, step
    parts = sum(v for k, v in steps.items() if k != "forward")
    assert abs(parts - steps["forward"]) <= 0.05 * steps["forward"] + 1.0


def test_timed_graph_ops_cover_every_step_and_restore_the_ops():
    from clustervig import degc, graph_updates

    torch.manual_seed(0)
    model = create_model("cvig_ti", img_size=64).eval()
    before = (degc.batched_kmeans, degc.partition_knn, graph_updates.max_aggregate)
    timed = time_graph_ops(model, torch.randn(2, 3, 64, 64), repeats=2)
    assert (degc.batched_kmeans, degc.partition_knn, graph_updates.max_aggregate) == before
    for step in ("k-means", "partition", "k-NN", "aggregation"):
        assert 0 < timed[step] < timed["forward"], step
    assert sum(v for k, v in timed.items() if k != "forward") < timed["forward"]


def test_profile_cli(tmp_path, capsys):
    out = tmp_path / "profile.json"
    args = ["--batch-size", "1", "--img-size", "64", "--repeats", "1", "--json", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "k-means" in text and "graph ops" in text and "%" in text
    data = json.loads(out.read_text())
    assert data["graph_ops_ms"] > 0 and data["forward_ms"] >= data["graph_ops_ms"]
    timed = data["timed"]
    assert 0 < timed["graph_ops_ms"] < timed["forward_ms"]
    assert timed["graph_ops_share"] == timed["graph_ops_ms"] / timed["forward_ms"]
