"""Which patches are connected? The partition and k-NN graph of a DEGC layer, on the image.

    python -m clustervig.visualize photo.jpg --model cvig_ti --layer 6 --node 7,4 --out graph.png

draws the image with its patches coloured by k-means cluster at DEGC layer ``--layer`` and the
in-partition k-NN neighbours of patch ``--node`` (column, row on the node grid) as edges. For a
Pyramid ViG model it draws that patch's dense k-NN neighbours at the first block of the stage
with the same grid (stride 16), for comparison. Random weights work too: they show the structure
of the graph, not learned semantics. From Python: :func:`degc_graph`, :func:`pvig_graph`,
:func:`draw`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from . import __version__
from ._config import parse_override
from .baselines.graph import ViGGrapher
from .baselines.pvig import PViG
from .cli import environment_error, user_error
from .conventions import IMAGENET_MEAN, IMAGENET_STD
from .degc import DEGC
from .model import CViG
from .registry import model_from_checkpoint

__all__ = ["LayerGraph", "degc_graph", "draw", "load_image", "main", "pvig_graph"]


@dataclass
class LayerGraph:
    """One image's graph at one layer: node grid ``(rows, cols)``, cluster of every node
    (``None`` for a dense graph) and the neighbours of the chosen node."""

    grid: tuple[int, int]
    labels: np.ndarray | None  # (rows * cols,) cluster of every node
    node: int  # the chosen node, raster index
    neighbours: list[int]  # its neighbours, raster indices (distinct, nearest first)
    title: str


def load_image(path: str | Path, size: int) -> tuple[np.ndarray, Tensor]:
    """An RGB image as the model sees it, ``size`` x ``size``: its central square (the shorter
    side; a non-square image is cropped, not stretched) resized, as ``(H, W, 3)`` uint8 for
    drawing and the normalised ``(1, 3, H, W)`` model input."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            side = min(rgb.size)
            left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
            rgb = rgb.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"visualize: cannot read image {str(path)!r} ({err})") from None
    pixels = np.array(rgb, dtype=np.uint8)
    x = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return pixels, ((x - mean) / std).unsqueeze(0)


def _layer_input(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """The input ``layer`` receives in ``model``'s forward of ``x`` (the forward stops there)."""
    captured: list[Tensor] = []

    class _Stop(Exception):
        pass

    def hook(_module, args):
        captured.append(args[0])
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured[0]


def _node_index(node: tuple[int, int] | None, rows: int, cols: int) -> int:
    if node is None:
        return (rows // 2) * cols + cols // 2
    col, row = node
    if not (0 <= col < cols and 0 <= row < rows):
        raise ValueError(
            f"visualize: argument 'node' must be a patch on the {cols}x{rows} node grid "
            f"(column 0..{cols - 1}, row 0..{rows - 1}), got {col},{row}"
        )
    return row * cols + col


def degc_graph(
    model: CViG, x: Tensor, layer: int = 0, node: tuple[int, int] | None = None
) -> LayerGraph:
    """The partition and the chosen node's neighbours at DEGC layer ``layer`` (0-based)."""
    layers = model.degc_layers()
    if not 0 <= layer < len(layers):
        raise ValueError(
            f"visualize: argument 'layer' must be a DEGC layer 0..{len(layers) - 1}, got {layer}"
        )
    degc: DEGC = layers[layer]
    features = _layer_input(model, degc, x)  # (1, C, H, W)
    rows, cols = features.shape[2:]
    with torch.no_grad():
        graph = degc.build_graph(DEGC.tokens(features))
    index = _node_index(node, rows, cols)
    neighbours = list(dict.fromkeys(graph.neighbours[index].tolist()))
    return LayerGraph(
        (rows, cols),
        graph.labels[0].numpy(),
        index,
        neighbours,
        f"DEGC layer {layer}: {degc.num_clusters} partitions, K = {degc.k}",
    )


def pvig_graph(model: PViG, x: Tensor, node: tuple[int, int] | None = None) -> LayerGraph:
    """The chosen node's dense (dilated) k-NN neighbours at the first Grapher whose node grid
    is at stride 16 (the grid ClusterViG-Ti/S/B use)."""
    target = x.shape[-1] // 16
    grapher = None
    for module in model.modules():
        if isinstance(module, ViGGrapher) and module.reduction == 1:
            grapher = module
            break
    if grapher is None:
        raise ValueError("visualize: this model has no Grapher at stride 16")
    features = _layer_input(model, grapher, x)
    rows, cols = features.shape[2:]
    if rows != target:  # pragma: no cover - PViG's stage 3 is at stride 16
        raise ValueError(f"visualize: expected a {target}x{target} grid, got {rows}x{cols}")
    with torch.no_grad():
        _, idx = grapher.neighbours(grapher.fc1(features))
    index = _node_index(node, rows, cols)
    return LayerGraph(
        (rows, cols),
        None,
        index,
        list(dict.fromkeys(idx[0, index].tolist())),
        f"Pyramid ViG dense k-NN, K = {grapher.k}, dilation {grapher.dilation}",
    )


def _legend(graph: LayerGraph, cmap) -> list:
    """What the colours and marks mean: each partition (its size) and the node and its
    neighbours."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    if graph.labels is not None:
        labels = np.asarray(graph.labels).reshape(-1)
        for k in sorted(set(labels.tolist())):
            count = int((labels == k).sum())
            handles.append(
                Patch(color=cmap(k % 10), alpha=0.6, label=f"partition {k} ({count} nodes)")
            )
    handles.append(
        Line2D([], [], marker="*", color="red", markeredgecolor="white", markersize=12,
               linestyle="none", label="the node")
    )  # fmt: skip
    handles.append(
        Line2D([], [], marker="o", color="yellow", markeredgecolor="black", markersize=6,
               linestyle="none", label="its neighbours")
    )  # fmt: skip
    return handles


def draw(pixels: np.ndarray, graph: LayerGraph, out: str | Path) -> Path:
    """The image, clusters as translucent colours, the chosen node and edges to its
    neighbours; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = graph.grid
    height, width = pixels.shape[:2]
    cell_h, cell_w = height / rows, width / cols

    def centre(i: int) -> tuple[float, float]:
        return ((i % cols) + 0.5) * cell_w, ((i // cols) + 0.5) * cell_h

    fig, ax = plt.subplots(figsize=(6, 7.0))
    ax.imshow(pixels)
    if graph.labels is not None:
        colours = plt.get_cmap("tab10")(graph.labels.reshape(rows, cols) % 10)
        colours[..., 3] = 0.38
        ax.imshow(colours, extent=(0, width, height, 0), interpolation="nearest")
    x0, y0 = centre(graph.node)
    for j in graph.neighbours:
        if j != graph.node:
            x1, y1 = centre(j)
            ax.plot([x0, x1], [y0, y1], color="white", linewidth=2.2, alpha=0.9)
            ax.plot([x0, x1], [y0, y1], color="black", linewidth=0.9)
            ax.plot(x1, y1, "o", color="yellow", markersize=5, markeredgecolor="black")
    ax.plot(x0, y0, "*", color="red", markersize=16, markeredgecolor="white")
    ax.legend(
        handles=_legend(graph, plt.get_cmap("tab10")),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.02),
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(
        f"{graph.title}\nnode ({graph.node % cols}, {graph.node // cols}) and its "
        f"{len(graph.neighbours)} distinct neighbours",
        fontsize=10,
    )
    fig.tight_layout()
    out = Path(out)
    if not out.parent.is_dir():  # a typo in a path must not create folders at random
        plt.close(fig)
        raise ValueError(f"--out: the folder {str(out.parent)!r} does not exist")
    try:
        fig.savefig(out, dpi=110)
    except OSError as err:
        raise ValueError(f"--out: cannot write {str(out)!r} ({err.strerror or err})") from None
    finally:
        plt.close(fig)
    return out


def _node_arg(text: str) -> tuple[int, int]:
    try:
        col, row = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y (column,row), got {text!r}") from None
    return col, row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clustervig.visualize",
        description="Draw the k-means partition and the k-NN neighbours of one patch at a DEGC "
        "layer of a ClusterViG model (or the dense k-NN of a Pyramid ViG model) over an image.",
    )
    parser.add_argument("image", type=Path, help="an image file (PNG, JPEG, ...)")
    parser.add_argument(
        "--model", help="model name (default: the --checkpoint's model, else cvig_ti)"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="weights for the model, in any layout load_checkpoint reads (default: random)",
    )
    parser.add_argument(
        "--model-args",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides of the model; a checkpoint that records its model fills in the rest",
    )
    parser.add_argument("--layer", type=int, default=0, help="DEGC layer, 0-based (default 0)")
    parser.add_argument(
        "--node", type=_node_arg, help="the patch as X,Y on the node grid (default: the centre)"
    )
    parser.add_argument(
        "--img-size", type=int, help="input size (default: the checkpoint's, else 224)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--out", type=Path, default=Path("graph.png"), help="PNG to write")
    parser.add_argument("--version", action="version", version=f"clustervig {__version__}")
    args = parser.parse_args(argv)
    if (code := environment_error("python -m clustervig.visualize")) is not None:
        return code
    try:
        overrides = dict(parse_override(item) for item in args.model_args)
        if args.img_size is not None:
            overrides["img_size"] = args.img_size
        torch.manual_seed(args.seed)
        name, model, options = model_from_checkpoint(
            args.model, overrides, args.checkpoint, "visualize", default="cvig_ti"
        )
        model.eval()
        img_size = int(options.get("img_size", 224))
        pixels, x = load_image(args.image, img_size)
        if isinstance(model, CViG):
            graph = degc_graph(model, x, args.layer, args.node)
        elif isinstance(model, PViG):
            graph = pvig_graph(model, x, args.node)
        else:
            raise ValueError(f"visualize: {name} has no graph to draw here (use cvig_* or pvig_*)")
        written = draw(pixels, graph, args.out)
    except ValueError as err:
        return user_error("python -m clustervig.visualize", err)
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
