"""ClusterViG (paper Sec. IV-C, Table III): Stem -> n_b x (Grapher, FFN) -> head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kernels._common import MAX_NEIGHBORS

from ._config import apply_overrides
from .conventions import BackboneConventions, min_input_side, pretrained_cfg
from .degc import DEGC
from .layers import (
    FFN,
    ClassifierHead,
    ConvBN,
    CViGStem,
    DropPath,
    PositionConv,
    add_position_embedding,
    add_residual,
    check_images,
)

__all__ = ["CViG", "CViGConfig", "Grapher", "VARIANTS", "cvig_ti", "cvig_s", "cvig_b", "cvig_b_hr"]

# Leaves under torch.fx symbolic tracing (timm / torchvision feature extraction): both read
# shapes and values in Python.
torch.fx.wrap("check_images")
torch.fx.wrap("add_position_embedding")


class Grapher(nn.Module):
    """``Y = fc2(DEGC(fc1(CPE(X) + X))) + X`` (paper Eq. 5).

    CPE is a depthwise 7x7 conv; fc1/fc2 are 1x1 conv + BN. The GELU of Eq. 5 is the last step of
    DEGC's local update, so none follows it here.
    """

    def __init__(
        self,
        channels: int,
        k: int,
        num_clusters: int,
        local_update: str = "mrgcn",
        groups: int = 1,
        kmeans_iters: int = 20,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.cpe = PositionConv(channels)
        self.fc1 = ConvBN(channels, channels)
        self.degc = DEGC(
            channels,
            k=k,
            num_clusters=num_clusters,
            out_channels=2 * channels,
            local_update=local_update,
            groups=groups,
            kmeans_iters=kmeans_iters,
        )
        self.fc2 = ConvBN(2 * channels, channels)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.fc1(self.cpe(x, residual=x))  # CPE(X) + X
        if not self.training:
            return add_residual(self.fc2, self.degc(y), x)
        return x + self.drop_path(self.fc2(self.degc(y)))


def neighbour_schedule(depth: int, k_min: int = 9, k_max: int = 18) -> list[int]:
    """K per block: ``int(linspace(k_min, k_max, depth))`` in float32, as the authors compute it."""
    return [int(v) for v in torch.linspace(k_min, k_max, depth, dtype=torch.float32, device="cpu")]


@dataclass(frozen=True)
class CViGConfig:
    """Hyper-parameters of a ClusterViG model. The defaults are CViG-Ti."""

    channels: int = 192  # C_iso
    depth: int = 12  # n_b
    grid: int = 14  # H_iso = W_iso, N_iso = grid^2
    num_clusters: int = 4  # kappa
    k_min: int = 9
    k_max: int = 18
    groups: int = 1  # channel groups of the local-update MLP
    local_update: str = "mrgcn"
    kmeans_iters: int = 20
    img_size: int = 224
    in_channels: int = 3
    num_classes: int = 1000
    distillation: bool = True
    drop_path_rate: float = 0.0
    drop_rate: float = 0.0


#: Paper Table III. ``groups``: Ti's local-update MLP is dense, S/B/B-dagger use 4 groups, which is
#: what makes the table's parameter counts come out (see shared/DESIGN.md).
VARIANTS: dict[str, CViGConfig] = {
    "cvig_ti": CViGConfig(channels=192, depth=12, grid=14, num_clusters=4, groups=1),
    "cvig_s": CViGConfig(channels=320, depth=16, grid=14, num_clusters=4, groups=4),
    "cvig_b": CViGConfig(channels=640, depth=16, grid=14, num_clusters=4, groups=4),
    "cvig_b_hr": CViGConfig(channels=640, depth=16, grid=28, num_clusters=6, groups=4),
}

_ALIASES = {
    "ti": "cvig_ti",
    "s": "cvig_s",
    "b": "cvig_b",
    "b_hr": "cvig_b_hr",
    "b†": "cvig_b_hr",
    "b_dagger": "cvig_b_hr",
    "cvig_b†": "cvig_b_hr",
    "cvig_b_dagger": "cvig_b_hr",
}


class CViG(BackboneConventions, nn.Module):
    """ClusterViG, isotropic: ``(B, 3, H, W) -> (B, num_classes)`` logits.

    Build a paper variant with ``CViG.from_variant("ti" | "s" | "b" | "b_hr")`` or
    :func:`clustervig.create_model`. In training mode with distillation the model returns
    ``(logits, distillation_logits)``; in eval mode their mean.

    Input images must be ``(B, in_channels, H, W)`` floats with H and W multiples of
    ``img_size / grid`` (16 for the 14x14 variants); other sizes than ``img_size`` resize the
    position embedding bicubically. Every image must yield at least ``num_clusters`` nodes.
    """

    def __init__(self, config: CViGConfig | None = None, **overrides):
        super().__init__()
        config = _resolve_config(config or CViGConfig(), overrides)
        self.config = config
        c = config.channels
        self.stem = CViGStem(c, config.img_size, config.grid, config.in_channels)
        self.reduction = 2**self.stem.num_halvings
        self.pos_embed = nn.Parameter(torch.zeros(1, c, config.grid, config.grid))
        ks = neighbour_schedule(config.depth, config.k_min, config.k_max)
        drop = torch.linspace(0, config.drop_path_rate, config.depth, device="cpu").tolist()
        blocks: list[nn.Module] = []
        for i in range(config.depth):
            blocks.append(
                Grapher(
                    c,
                    k=ks[i],
                    num_clusters=config.num_clusters,
                    local_update=config.local_update,
                    groups=config.groups,
                    kmeans_iters=config.kmeans_iters,
                    drop_path=drop[i],
                )
            )
            blocks.append(FFN(c, 4 * c, drop_path=drop[i]))
        self.backbone = nn.Sequential(*blocks)
        self.head = ClassifierHead(
            c, config.num_classes, distillation=config.distillation, drop_rate=config.drop_rate
        )
        self.validate_inputs = True
        _init_weights(self)

    @classmethod
    def from_variant(cls, name: str, **overrides) -> CViG:
        """A paper variant (``ti``, ``s``, ``b``, ``b_hr`` / ``b†``, or ``cvig_ti``, ``CViG-Ti``
        ...; any case); keywords override options."""
        if not isinstance(name, str):
            raise ValueError(
                f"CViG.from_variant: argument 'name' must be a string such as 'ti' or 'CViG-Ti', "
                f"got {name!r}"
            )
        key = name.strip().lower().replace("-", "_")
        key = _ALIASES.get(key, key)
        if key not in VARIANTS:
            raise ValueError(
                f"CViG.from_variant: argument 'name' must be one of {sorted(VARIANTS)} "
                f"(or {sorted(_ALIASES)}), got {name!r}"
            )
        return cls(VARIANTS[key], **overrides)

    # ----------------------------------------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` for an input the model cannot run."""
        check_images(
            "CViG",
            x,
            self.config.in_channels,
            self.reduction,
            min_nodes=self.config.num_clusters,
            needs="num_clusters",
            check_finite=self.validate_inputs,
            like=self.pos_embed,
        )

    def _embed(self, x: Tensor) -> Tensor:
        """Checked input -> stem -> + position embedding: the backbone's input."""
        self.check_input(x)
        return add_position_embedding(self.stem(self.input_layout(x)), self.pos_embed)

    @staticmethod
    def smallest_input_side(config: CViGConfig) -> int:
        """The smallest square input ``config`` takes: ``num_clusters`` nodes."""
        return min_input_side(config.img_size // config.grid, config.num_clusters)

    @property
    def pretrained_cfg(self) -> dict:
        c = self.config
        return self._with_architecture(
            pretrained_cfg(
                self.num_classes,
                c.img_size,
                c.in_channels,
                c.grid,
                "stem.convs.0.0",
                self.smallest_input_side(c),
            )
        )

    def degc_layers(self) -> list[DEGC]:
        return [m for m in self.modules() if isinstance(m, DEGC)]


def _resolve_config(base: CViGConfig, overrides: dict) -> CViGConfig:
    """``base`` with ``overrides``, checked by name. An ``img_size`` without a ``grid`` keeps the
    variant's stem reduction (16 for the 14x14 variants, 8 for B-dagger), so any size that
    reduction divides works: 256 px gives a 16x16 grid."""
    overrides = dict(overrides)
    if isinstance(overrides.get("local_update"), str):
        overrides["local_update"] = overrides["local_update"].lower()
    if "img_size" in overrides and "grid" not in overrides:
        size, ratio = overrides["img_size"], base.img_size // base.grid
        if not isinstance(size, int) or size < ratio or size % ratio:
            raise ValueError(
                f"CViG: argument 'img_size' must be a positive multiple of {ratio} (the stem "
                f"divides it by {ratio}), got {size!r}; for another reduction pass 'grid' too "
                f"(img_size / grid must be a power of two up to 16)"
            )
        overrides["grid"] = size // ratio
    config = apply_overrides("CViG", base, overrides)
    for name in ("k_min", "k_max"):
        value = getattr(config, name)
        if not isinstance(value, int) or not 1 <= value <= MAX_NEIGHBORS:
            raise ValueError(
                f"CViG: argument '{name}' must be an int in [1, {MAX_NEIGHBORS}], got {value!r}"
            )
    if config.k_min > config.k_max:
        raise ValueError(
            f"CViG: argument 'k_min' ({config.k_min}) must not exceed 'k_max' ({config.k_max})"
        )
    return config


def _init_weights(model: nn.Module) -> None:
    """The authors' init: Kaiming-normal convs with zero bias, BN at identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def cvig_ti(**kwargs) -> CViG:
    """CViG-Ti: C=192, 12 blocks, 14x14 nodes, kappa=4 (11.5 M params)."""
    return CViG.from_variant("cvig_ti", **kwargs)


def cvig_s(**kwargs) -> CViG:
    """CViG-S: C=320, 16 blocks, 14x14 nodes, kappa=4 (28.2 M params)."""
    return CViG.from_variant("cvig_s", **kwargs)


def cvig_b(**kwargs) -> CViG:
    """CViG-B: C=640, 16 blocks, 14x14 nodes, kappa=4 (104.8 M params)."""
    return CViG.from_variant("cvig_b", **kwargs)


def cvig_b_hr(**kwargs) -> CViG:
    """CViG-B-dagger: CViG-B at 28x28 nodes with kappa=6 (105.2 M params)."""
    return CViG.from_variant("cvig_b_hr", **kwargs)
