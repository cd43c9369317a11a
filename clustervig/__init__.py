"""ClusterViG: a vision graph neural network built on Dynamic Efficient Graph Convolution.

>>> from clustervig import CViG, create_model
>>> model = CViG.from_variant("ti")            # or create_model("cvig_ti")
>>> baseline = create_model("pvig_ti")
"""

from .baselines import IViG, PViG
from .checkpoint import load_checkpoint
from .counting import count_gmacs, count_parameters
from .degc import DEGC
from .inference import deploy
from .model import VARIANTS, CViG, CViGConfig, Grapher, cvig_b, cvig_b_hr, cvig_s, cvig_ti
from .registry import DISPLAY_NAMES, canonical_name, create_model, list_models
from .timm_models import install as _install_timm_models

__all__ = [
    "CViG",
    "CViGConfig",
    "DEGC",
    "DISPLAY_NAMES",
    "Grapher",
    "IViG",
    "PViG",
    "VARIANTS",
    "canonical_name",
    "count_gmacs",
    "count_parameters",
    "create_model",
    "deploy",
    "cvig_b",
    "cvig_b_hr",
    "cvig_s",
    "cvig_ti",
    "list_models",
    "load_checkpoint",
]

__version__ = "0.1.0"

# Into timm's registry when timm is (or gets) imported: timm.create_model("cvig_ti").
_install_timm_models()
