"""GATv2 attention over each image's complete graph of kappa centroids (the global update).

- ``kernel.py``: the Triton kernel, its search space and launcher
- ``reference.py``: the PyTorch reference (the contract)
- ``op.py``: the custom op ``clustervig::gatv2_attention``
- ``cases.py``: the self-check cases
"""

from .op import GATV2_ATTENTION, gatv2_attention

__all__ = ["GATV2_ATTENTION", "gatv2_attention"]
