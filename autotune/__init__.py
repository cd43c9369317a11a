"""Per-GPU kernel tuning: ``python -m autotune --gpu`` self-checks and tunes every kernel and
persists the winners in the per-GPU cache that kernel launches read (``kernels/tuning_cache.py``).
It builds on ``kernels/``; nothing in ``kernels/`` imports it."""
