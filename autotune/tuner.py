"""Benchmark every config of a kernel's search space on one launch shape and keep the fastest.

Inputs are synthesised like the model's by each kernel's own recipe (its tunable's
``tune_call``: L2-normalised features, real partitions). Every config's output is checked
against the default config's before it may win: a config that fails to compile, crashes or
computes something else is reported and skipped, so a wrong config is never stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kernels.tuning import Tunable, TuneCase

from .space import Launch


@dataclass
class Outcome:
    launch: Launch
    best: dict
    best_ms: float
    default_ms: float
    tried: int
    rejected: list[tuple[dict, str]]


def make_call(launch: Launch, tunable: Tunable, device: torch.device) -> TuneCase:
    """The launch's kernel on synthetic inputs, and how to tell a correct output (the kernel's
    own recipe, :attr:`kernels.tuning.Tunable.tune_call`)."""
    return tunable.tune_call(launch.shape, launch.dtype, device)


def time_config(
    call: Callable[[dict], object], config: dict, device: torch.device, warmup: int, repeats: int
) -> float:
    """Median milliseconds of one config."""
    if device.type == "cuda":
        import triton.testing

        return float(
            triton.testing.do_bench(
                lambda: call(config), warmup=warmup, rep=repeats, return_mode="median"
            )
        )
    for _ in range(warmup):
        call(config)
    samples = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        call(config)
        samples.append((time.perf_counter() - start) * 1e3)
    return sorted(samples)[len(samples) // 2]


def drop_spilling(
    tunable: Tunable,
    configs: list[dict],
    dtype: torch.dtype,
    arch: int,
    memo: dict | None = None,
) -> tuple[list[dict], list[tuple[dict, str]]]:
    """Split ``configs`` into those that compile without register spills for ``sm_<arch>`` on
    the installed Triton and those that spill there (with the reason).

    Spill-free lists are checked in CI for the oldest and newest supported Triton, but register
    allocation changes between versions: the installed compiler has the last word. A config
    whose resources cannot be read is kept (and later timed like any other). ``memo`` keeps
    the answers across calls: every bucket of an op and dtype tries the same configs.
    """
    from kernels import resources

    memo = {} if memo is None else memo
    kept, dropped = [], []
    for config in configs:
        key = (tunable.name, tuple(sorted(config.items())), dtype, arch)
        if key not in memo:
            try:
                memo[key] = resources.resource_usage(tunable, config, dtype, arch)
            except Exception:  # noqa: BLE001 - no cuobjdump or no compile: let timing decide
                memo[key] = None
        usage = memo[key]
        if usage is None:
            kept.append(config)
            continue
        if usage.spills:
            reason = (
                f"spills registers on this Triton (stack {usage.stack} B, local {usage.local} B)"
            )
            dropped.append((config, reason))
        else:
            kept.append(config)
    return kept, dropped


def tune(
    launch: Launch,
    tunable: Tunable,
    configs: list[dict],
    device: torch.device,
    warmup: int,
    repeats: int,
    deadline: float | None = None,
) -> Outcome | None:
    """Time every config of ``configs`` that agrees with the default's result; the fastest is
    the outcome. Past ``deadline`` (a ``time.monotonic()`` value) the search stops and returns
    ``None``: a bucket searched in part is not a tuned bucket."""
    case = make_call(launch, tunable, device)
    call = case.run
    width = launch.bucket.split("/", 1)[0]
    default = tunable.default[width] if device.type == "cuda" else configs[0]
    expected = call(default)
    timings: dict[int, float] = {}
    rejected: list[tuple[dict, str]] = []
    for i, config in enumerate(configs):
        if deadline is not None and time.monotonic() >= deadline:
            return None
        try:
            if not case.agrees(call(config), expected):
                rejected.append((config, "output differs from the default config's"))
                continue
            timings[i] = time_config(call, config, device, warmup, repeats)
        except Exception as err:  # a config that cannot compile or run is skipped, not fatal
            rejected.append((config, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"))
    if not timings:
        raise RuntimeError(f"{launch.op} {launch.bucket}: no config ran correctly: {rejected}")
    best = min(timings, key=timings.get)
    default_index = configs.index(default) if default in configs else best
    return Outcome(
        launch,
        dict(configs[best]),
        timings[best],
        timings.get(default_index, float("nan")),
        len(configs),
        rejected,
    )
