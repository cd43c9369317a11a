"""Triton kernels of the DEGC layer, each with a pure-torch reference, behind torch custom ops.

The model calls only the ops re-exported here (see ``kernels/ops.py``):

- :func:`batched_kmeans`: cluster every image's nodes (``kernels/kmeans.py``)
- :func:`partition`: partition order of the nodes (``kernels/permute.py``)
- :func:`permute_rows`: image order <-> partition order (``kernels/permute.py``)
- :func:`partition_knn`: K nearest neighbours inside each partition (``kernels/knn.py``)
- :func:`max_aggregate`: fused gather + max(-relative) aggregation (``kernels/aggregate.py``)
- :func:`segment_norm_gelu`: the local update's inference epilogue (``kernels/epilogue.py``)
- :func:`center_tokens`: a layer's nodes, mean-centred (``kernels/center.py``)
- :func:`gatv2_attention`: the centroid graph's attention (``kernels/gatv2.py``)

CUDA tensors run the Triton kernels; CPU tensors run ``kernels/reference.py`` unless
:func:`use_backend` selects ``"triton"`` under the Triton interpreter (``TRITON_INTERPRET=1``).
:func:`one_cpu_thread` runs a block of small CPU ops on one thread (the model's DEGC layers use
it for small batches: with passive OpenMP waiting every parallel op pays a pool wake-up).
"""

from ._common import backend, interpreter_active, one_cpu_thread, use_backend
from .ops import (
    batched_kmeans,
    center_tokens,
    gatv2_attention,
    max_aggregate,
    partition,
    partition_knn,
    permute_rows,
    segment_norm_gelu,
)

__all__ = [
    "backend",
    "batched_kmeans",
    "center_tokens",
    "gatv2_attention",
    "interpreter_active",
    "max_aggregate",
    "one_cpu_thread",
    "partition",
    "partition_knn",
    "permute_rows",
    "segment_norm_gelu",
    "use_backend",
]
