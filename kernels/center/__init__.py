"""A feature map's nodes, mean-centred per image and channel: ``(B, C, H, W) -> (B, N, C)``.

- ``kernel.py``: the Triton kernel, its search space and launcher
- ``reference.py``: the PyTorch reference (the contract)
- ``op.py``: the custom op ``clustervig::center_tokens``
- ``cases.py``: the self-check cases
"""

from .op import CENTER_TOKENS, center_tokens

__all__ = ["CENTER_TOKENS", "center_tokens"]
