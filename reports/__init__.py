"""Benchmarks and figures: ``python -m reports {run,scaling,micro,plot,all}``.

Results are JSON files in ``reports/results/`` (``<kind>-<device>-<date>.json``, with device,
torch/triton versions, dtype and compile mode); figures and tables are drawn from them alone into
``reports/figures/``.
"""
