"""Max aggregation over each node's K neighbours (``max_k x[nbr] - x``, MRConv) and its backward.

- ``kernel.py``: the Triton kernels, their search spaces and launchers
- ``reference.py``: the PyTorch reference (the contract)
- ``native.py`` + ``aggregate.c``: the forward's compiled CPU twin
- ``op.py``: the custom ops ``clustervig::max_aggregate`` / ``max_aggregate_backward``
- ``cases.py``: the self-check cases
"""

from .op import MAX_AGGREGATE, MAX_AGGREGATE_BACKWARD, max_aggregate

__all__ = ["MAX_AGGREGATE", "MAX_AGGREGATE_BACKWARD", "max_aggregate"]
