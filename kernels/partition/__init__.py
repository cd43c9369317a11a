"""The partition order of k-means labels, and rows moved between image and partition order.

``partition`` turns labels into the paper's "unrolled and arranged" layout: nodes sorted by
(image, cluster), stable inside a cluster. ``permute_rows`` moves feature rows between the two
orders (``out[i] = x[index[i]]``).

- ``kernel.py``: the Triton kernels, their search spaces and launchers
- ``reference.py``: the PyTorch references (the contracts)
- ``native.py`` + ``partition.c``: the partition order's compiled CPU twin
- ``op.py``: the custom ops ``clustervig::partition`` / ``permute_rows``
- ``cases.py``: the self-check cases
"""

from .op import PARTITION, PERMUTE_ROWS, partition, permute_rows

__all__ = ["PARTITION", "PERMUTE_ROWS", "partition", "permute_rows"]
