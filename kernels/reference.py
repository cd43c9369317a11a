"""Pure-torch references of every DEGC op: the CPU path of the model and the oracle of the kernels.

Each reference lives beside its kernels (``kernels/<op>/reference.py``); this module gathers
them under their op names. The contracts here are the contracts of the Triton kernels and of the
custom ops. Shapes use B images, N nodes per image, C channels, kappa clusters, M = B*N rows in
partition order, P = B*kappa partitions, K neighbours. Index tensors are int32.

Precision: distances and means are computed in float32 (the CPU path of the model should not
pay for float64), or in float64 for float64 inputs: the tests pass float64 copies to use the
references as oracles. Results are cast back to the input dtype. Ties are broken towards the
lowest index everywhere (argmin over clusters, neighbour order, argmax over neighbour slots), as
the kernels do.
"""

from __future__ import annotations

from ._common import compute_dtype
from .aggregate.reference import max_aggregate, max_aggregate_backward
from .center.reference import center_tokens
from .epilogue.reference import segment_norm_gelu
from .gatv2.reference import gatv2_attention
from .kmeans.reference import kmeans, kmeans_init_index
from .knn.reference import partition_knn
from .partition.reference import partition, permute_rows

__all__ = [
    "center_tokens",
    "compute_dtype",
    "gatv2_attention",
    "kmeans",
    "kmeans_init_index",
    "max_aggregate",
    "max_aggregate_backward",
    "partition",
    "partition_knn",
    "permute_rows",
    "segment_norm_gelu",
]
