"""Per-GPU kernel tuning: ``python -m autotune --gpu`` tunes every kernel and persists the
winners; kernel launches read them back (``autotune/cache.py``)."""
