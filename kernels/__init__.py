"""Triton kernels of the DEGC layer, each with a pure-torch reference, behind torch custom ops.

One folder per op, each holding its kernels, launcher and search space, its PyTorch reference,
its compiled CPU twin where it has one, its op definition and its self-check cases:

- :func:`batched_kmeans`: cluster every image's nodes (``kernels/kmeans/``)
- :func:`partition`: partition order of the nodes (``kernels/partition/``)
- :func:`permute_rows`: image order <-> partition order (``kernels/partition/``)
- :func:`partition_knn`: K nearest neighbours inside each partition (``kernels/knn/``)
- :func:`max_aggregate`: fused gather + max(-relative) aggregation (``kernels/aggregate/``)
- :func:`segment_norm_gelu`: the local update's inference epilogue (``kernels/epilogue/``)
- :func:`center_tokens`: a layer's nodes, mean-centred (``kernels/center/``)
- :func:`gatv2_attention`: the centroid graph's attention (``kernels/gatv2/``)

What they share sits beside the folders, bottom up: ``_common`` (limits, validation),
``tuning`` / ``tuning_cache`` (configs per GPU), ``checking`` (inputs with unique answers,
tolerances), ``verdicts`` (self-check results and the launch gate), ``native`` (the C build),
``backend`` (which implementation runs), ``opdef`` (how an op is defined), ``launches``
(recording launches without a GPU); at the top ``registry`` lists every op, and
``reference``, ``selfcheck`` and ``resources`` work on all of them.

CUDA tensors run the Triton kernels; CPU tensors run the compiled CPU kernels or the references
unless :func:`use_backend` selects ``"triton"`` under the Triton interpreter
(``TRITON_INTERPRET=1``). :func:`one_cpu_thread` runs a block of small CPU ops on one thread
(the model's DEGC layers use it for small batches: with passive OpenMP waiting every parallel op
pays a pool wake-up).
"""

from ._common import (
    MAX_CLUSTERS,
    MAX_NEIGHBORS,
    SINGLE_THREAD_ROWS,
    interpreter_active,
    one_cpu_thread,
)
from .aggregate import max_aggregate
from .backend import backend, check_environment, use_backend
from .center import center_tokens
from .epilogue import segment_norm_gelu
from .gatv2 import gatv2_attention
from .kmeans import batched_kmeans
from .knn import partition_knn
from .partition import partition, permute_rows

__all__ = [
    "MAX_CLUSTERS",
    "MAX_NEIGHBORS",
    "SINGLE_THREAD_ROWS",
    "backend",
    "check_environment",
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
