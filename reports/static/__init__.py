"""``python -m reports.static``: a static performance report of one forward pass on a GPU we do
not have. Every number it prints is an ESTIMATE (shapes, compiled code and a roofline), not a
measurement.

    python -m reports.static --model cvig_ti --batch-size 256 --gpu h100 --dtype bf16 --json F

What it does, without a GPU:

1. Traces one eval forward of the model (the second: a steady state) on the ``meta`` device inside
   :func:`kernels.launches.record_launches`: every Triton launch the custom ops would make
   (kernel, grid, config, arguments), tagged with its DEGC layer. The eager PyTorch ops around
   them inside each DEGC layer ("glue") and the dense matmuls / convolutions of each block are
   traced in the same pass (a dispatch mode and ``FlopCounterMode``).
2. Compiles every distinct launch for the GPU's architecture as the JIT specialises it and reads
   registers, shared memory, spills and the SASS (instructions, ``BAR`` barriers, the innermost
   loops: the hot loop).
3. Estimates each launch's time as the largest of: memory (bytes / bandwidth, scaled down when
   too few SMs are busy to draw it), tensor cores (FLOPs / peak), issue (warp instructions /
   (busy SMs x 4 schedulers x clock)), and a launch floor. Bytes, FLOPs and loop trip counts
   come from a work model per kernel (``WORK_MODELS``) under two stated assumptions: Lloyd
   iterations per image (``--kmeans-iters``) and equal partitions (N / kappa nodes each).

It lives in ``reports`` (not ``kernels.resources``) because it builds models: ``kernels`` never
imports ``clustervig``.

The package, in the order of those steps: :mod:`~reports.static.gpus` (the GPU table),
:mod:`~reports.static.tracing` (step 1), :mod:`~reports.static.sass` (reading the SASS of step 2),
:mod:`~reports.static.work` (the work models), :mod:`~reports.static.estimate` (compiling a launch
and step 3) and :mod:`~reports.static.forward_report` (the report of one forward: its rows,
summary, printout and command line). Every name is importable from ``reports.static``.
"""

from __future__ import annotations

from .estimate import compiled_facts, estimate_us, programs_per_sm
from .forward_report import COLUMNS, main, print_report, report, summarise
from .gpus import GPU, GPUS, L2_RESIDENT_SHARE, LAUNCH_FLOOR_US, SM_BANDWIDTH_SHARE
from .sass import LOOP_ROLES, Sass, loop_roles, parse_sass
from .tracing import trace
from .work import WORK_MODELS, Work, partition_sizes

__all__ = [
    "COLUMNS",
    "GPU",
    "GPUS",
    "L2_RESIDENT_SHARE",
    "LAUNCH_FLOOR_US",
    "LOOP_ROLES",
    "SM_BANDWIDTH_SHARE",
    "Sass",
    "WORK_MODELS",
    "Work",
    "compiled_facts",
    "estimate_us",
    "loop_roles",
    "main",
    "parse_sass",
    "partition_sizes",
    "print_report",
    "programs_per_sm",
    "report",
    "summarise",
    "trace",
]
