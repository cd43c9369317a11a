"""The ViG baselines ClusterViG is compared with: Pyramid ViG and isotropic ViG (dense k-NN)."""

from .graph import MRConv, ViGGrapher, dense_dilated_knn, relative_position_table
from .ivig import IVIG_VARIANTS, IViG, IViGConfig
from .pvig import PVIG_VARIANTS, PViG, PViGConfig

__all__ = [
    "IVIG_VARIANTS",
    "IViG",
    "IViGConfig",
    "MRConv",
    "PVIG_VARIANTS",
    "PViG",
    "PViGConfig",
    "ViGGrapher",
    "dense_dilated_knn",
    "relative_position_table",
]
