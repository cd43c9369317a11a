"""The local update's inference epilogue: ``GELU(BN(acc + bias + table[segment]))`` in one pass.

- ``kernel.py``: the Triton kernel, its search space and launcher
- ``reference.py``: the PyTorch reference (the contract)
- ``op.py``: the custom op ``clustervig::segment_norm_gelu``
- ``cases.py``: the self-check cases
"""

from .op import SEGMENT_NORM_GELU, segment_norm_gelu

__all__ = ["SEGMENT_NORM_GELU", "segment_norm_gelu"]
