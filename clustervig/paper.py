"""Published numbers the implementation is checked against.

``PAPER_*``: the tables of the ClusterViG paper (Table III) and the ViG paper (Han et al. 2022).
``COUNTER_GMACS``: the authors' architectures counted with ``torch.utils.flop_counter`` at
224x224 (``shared/DESIGN.md``): the paper's GMACs column was counted with a tool that skips
``nn.Linear`` layers, so it is lower for ClusterViG, whose local update and GATv2 are linear layers.
"""

PAPER_PARAMS_M = {
    "cvig_ti": 11.5,
    "cvig_s": 28.2,
    "cvig_b": 104.8,
    "cvig_b_hr": 105.2,
    "pvig_ti": 10.7,
    "pvig_s": 27.3,
    "pvig_m": 51.7,
    "pvig_b": 92.6,
    "ivig_ti": 7.1,
    "ivig_s": 22.7,
    "ivig_b": 86.8,
}

PAPER_GMACS = {
    "cvig_ti": 1.3,
    "cvig_s": 4.2,
    "cvig_b": 16.2,
    "cvig_b_hr": 62.3,
    "pvig_ti": 1.7,
    "pvig_s": 4.6,
    "pvig_m": 8.9,
    "pvig_b": 16.8,
    "ivig_ti": 1.3,
    "ivig_s": 4.5,
    "ivig_b": 17.7,
}

COUNTER_GMACS = {
    "cvig_ti": 1.88,
    "cvig_s": 4.80,
    "cvig_b": 18.43,
    "cvig_b_hr": 77.1,
    "pvig_ti": 1.70,
    "pvig_s": 4.55,
    "pvig_b": 16.80,
}

#: Published ImageNet-1k top-1 (%) at 224 x 224 and where it is published: the ClusterViG
#: paper's Table IV, except DeiT-Ti (not in it). For the deployment comparison's figure.
PUBLISHED_TOP1 = {
    "cvig_ti": (80.3, "ClusterViG paper, Table IV"),
    "cvig_s": (83.7, "ClusterViG paper, Table IV"),
    "pvig_ti": (78.2, "ClusterViG paper, Table IV (ViG, Han et al. 2022)"),
    "pvig_s": (82.1, "ClusterViG paper, Table IV (ViG, Han et al. 2022)"),
    "efficientformer_l1": (79.2, "ClusterViG paper, Table IV (EfficientFormer, Li et al. 2022)"),
    "efficientformerv2_s2": (
        81.6,
        "ClusterViG paper, Table IV (EfficientFormerV2, Li et al. 2023)",
    ),
    "levit_192": (80.0, "ClusterViG paper, Table IV (LeViT, Graham et al. 2021)"),
    "resnet18": (69.7, "ClusterViG paper, Table IV (ResNet, He et al. 2016)"),
    "deit_tiny_patch16_224": (72.2, "DeiT paper (Touvron et al. 2021)"),
}
