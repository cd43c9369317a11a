"""The K nearest neighbours of every node inside its partition (the graph of a DEGC layer).

- ``kernel.py``: the Triton kernel (padded-ragged distances + top-K), its search space and
  launcher
- ``reference.py``: the PyTorch reference (the contract)
- ``native.py`` + ``knn.c``: the compiled CPU twin
- ``op.py``: the custom op ``clustervig::partition_knn``
- ``cases.py``: the self-check cases
"""

from .op import PARTITION_KNN, partition_knn

__all__ = ["PARTITION_KNN", "partition_knn"]
