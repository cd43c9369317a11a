"""Batched k-means over each image's nodes (the partition of a DEGC layer).

- ``kernels.py``: the Triton kernels of the three paths (one program per image, resident,
  split)
- ``spaces.py``: their search spaces, defaults and tile limits
- ``launch.py``: their tunables, the choice of path and the launchers
- ``reference.py``: the PyTorch reference (the contract) and the deterministic seeds
- ``native.py`` + ``kmeans.c``: the compiled CPU twin
- ``op.py``: the custom op ``clustervig::kmeans``
- ``cases.py``: the self-check cases
"""

from .op import KMEANS, batched_kmeans

__all__ = ["KMEANS", "batched_kmeans"]
