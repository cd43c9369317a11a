"""``python -m clustervig.visualize``: partitions and neighbours drawn over an image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clustervig import create_model
from clustervig.visualize import degc_graph, load_image, main, pvig_graph


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A small structured picture: two colours with a square in the middle."""
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[:32] = (110, 170, 235)
    pixels[32:] = (70, 150, 60)
    pixels[20:44, 20:44] = (170, 60, 50)
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(pixels).save(path)
    return path


def test_degc_neighbours_share_the_node_partition(image):
    torch.manual_seed(0)
    model = create_model("cvig_ti", img_size=64).eval()
    _, x = load_image(image, 64)
    graph = degc_graph(model, x, layer=2, node=(1, 2))
    assert graph.grid == (4, 4) and graph.labels.shape == (16,)
    assert graph.node == 2 * 4 + 1
    assert graph.node in graph.neighbours  # a node is its own nearest
    assert {int(graph.labels[j]) for j in graph.neighbours} == {int(graph.labels[graph.node])}
    assert len(graph.neighbours) == len(set(graph.neighbours)) <= model.degc_layers()[2].k


def test_pvig_dense_neighbours(image):
    torch.manual_seed(0)
    model = create_model("pvig_ti").eval()
    _, x = load_image(image, 224)
    graph = pvig_graph(model, x)
    assert graph.grid == (14, 14) and graph.labels is None
    assert 1 <= len(graph.neighbours) <= 9 and all(0 <= j < 196 for j in graph.neighbours)


def test_cli_writes_a_png(image, tmp_path, capsys):
    out = tmp_path / "graph.png"
    args = [str(image), "--img-size", "64", "--layer", "1", "--node", "0,3", "--out", str(out)]
    assert main(args) == 0
    assert out.exists() and Image.open(out).format == "PNG"
    assert str(out) in capsys.readouterr().out


def test_cli_loads_a_checkpoint_and_rejects_one_that_does_not_fit(image, tmp_path, capsys):
    model = create_model("cvig_ti", img_size=64)
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save(model.state_dict(), good)
    torch.save({"stem.weight": torch.zeros(3)}, bad)
    common = [str(image), "--img-size", "64", "--out", str(tmp_path / "g.png")]
    assert main([*common, "--checkpoint", str(good)]) == 0
    assert main([*common, "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unrecognised checkpoint keys" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--node", "9,9"], "'node' must be a patch on the 4x4 node grid"),
        (["--layer", "40"], "'layer' must be a DEGC layer 0..11"),
        (["--model", "ivig_ti"], "no graph to draw"),
    ],
)
def test_cli_user_errors_are_one_line(image, tmp_path, capsys, extra, message):
    args = [str(image), "--img-size", "64", "--out", str(tmp_path / "g.png"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_unreadable_image(tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    assert main([str(broken), "--out", str(tmp_path / "g.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_a_wide_image_is_cropped_to_its_centre_not_stretched(tmp_path):
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, 20:60] = 200  # the central square is bright, the sides dark
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    pixels, x = load_image(path, 32)
    assert pixels.shape == (32, 32, 3) and x.shape == (1, 3, 32, 32)
    assert pixels.min() >= 190  # only the central square: nothing of the dark sides


def test_the_figure_has_a_legend_of_partitions_and_marks(image):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from clustervig.visualize import _legend

    torch.manual_seed(0)
    graph = degc_graph(create_model("cvig_ti", img_size=64).eval(), load_image(image, 64)[1], 0)
    labels = [h.get_label() for h in _legend(graph, plt.get_cmap("tab10"))]
    sizes = np.bincount(np.asarray(graph.labels).reshape(-1))
    parts = [label for label in labels if label.startswith("partition")]
    assert (
        len(parts) == int((sizes > 0).sum())
        and sum(int(p.split("(")[1].split()[0]) for p in parts) == sizes.sum()
    )
    assert labels[-2:] == ["the node", "its neighbours"]
