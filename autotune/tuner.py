"""Benchmark every config of a kernel's search space on one launch shape and keep the fastest.

Inputs are synthesised like the model's (L2-normalised features, k-means labels, real
partitions). Every config's output is checked against the default config's before it may win:
a config that fails to compile, crashes or computes something else is reported and skipped, so a
wrong config is never stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import aggregate, center, epilogue, gatv2, kmeans, knn, permute, reference
from kernels._tuning import Tunable

from .space import Launch


@dataclass
class Outcome:
    launch: Launch
    best: dict
    best_ms: float
    default_ms: float
    tried: int
    rejected: list[tuple[dict, str]]


def _features(rows: int, channels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return F.normalize(torch.randn(rows, channels, device=device), dim=-1).to(dtype)


def _partitioned(B: int, N: int, C: int, kappa: int, dtype: torch.dtype, device: torch.device):
    x = _features(B * N, C, dtype, device).reshape(B, N, C)
    labels = reference.kmeans(x.float().cpu(), kappa, 5)[0].to(device)
    perm, inverse, offsets, _ = reference.partition(labels.cpu(), kappa)
    return x, labels, perm.to(device), offsets.to(device)


_KMEANS_PATHS = {"kmeans": "image", "kmeans_split": "split", "kmeans_resident": "resident"}


def make_call(launch: Launch, device: torch.device) -> Callable[[dict], object]:
    """A function ``config -> output`` running the launch's kernel on synthetic inputs."""
    s, dtype = launch.shape, launch.dtype
    if launch.op in _KMEANS_PATHS:
        x = _features(s["B"] * s["N"], s["C"], dtype, device).reshape(s["B"], s["N"], s["C"])
        path = _KMEANS_PATHS[launch.op]
        return lambda cfg: kmeans.kmeans(x, s["kappa"], 20, config=cfg, path=path)
    if launch.op == "partition":
        kappa = s["kappa"]
        images = 64 if device.type == "cuda" else 4  # one program per image
        labels = torch.randint(0, kappa, (images, s["N"]), dtype=torch.int32, device=device)
        return lambda cfg: permute.partition(labels, kappa, config=cfg)
    if launch.op == "permute_rows":
        x = torch.randn(s["M"], s["C"], device=device).to(dtype)
        index = torch.randperm(s["M"], device=device).to(torch.int32)
        return lambda cfg: permute.permute_rows(x, index, config=cfg)
    if launch.op == "partition_knn":
        N = s["S"]
        B = max(1, s["M"] // N)
        kappa = max(1, round(N / 49)) if N <= 196 else 6  # the variants' partition sizes
        x, _, perm, offsets = _partitioned(B, N, s["C"], min(kappa, N), dtype, device)
        rows = x.reshape(B * N, -1)  # the model's launch: image order, gathered and normalised
        return lambda cfg: knn.partition_knn(
            rows, offsets, s["K"], N, perm=perm, normalize=True, config=cfg
        )
    if launch.op in ("max_aggregate", "max_aggregate_backward"):
        x = torch.randn(s["M"], s["C"], device=device).to(dtype)
        nbr = torch.randint(0, s["M"], (s["M"], s["K"]), dtype=torch.int32, device=device)
        if launch.op == "max_aggregate":
            return lambda cfg: aggregate.max_aggregate(x, nbr, True, True, config=cfg)
        _, slot = reference.max_aggregate(x.cpu(), nbr.cpu(), True)
        slot = slot.to(device)
        grad = torch.randn(s["M"], s["C"], device=device).to(dtype)
        return lambda cfg: aggregate.max_aggregate_backward(grad, nbr, slot, True, config=cfg)
    if launch.op == "gatv2_attention":
        shape = (s["B"], s["kappa"], s["C"])
        source, target = (torch.randn(shape, device=device).to(dtype) for _ in range(2))
        att, bias = (torch.randn(s["C"], device=device).to(dtype) for _ in range(2))
        return lambda cfg: gatv2.gatv2_attention(source, target, att, bias, 0.2, config=cfg)
    if launch.op == "center_tokens":
        side = int(s["N"] ** 0.5)
        x = torch.randn(s["B"], s["C"], side, s["N"] // side, device=device).to(dtype)
        return lambda cfg: center.center_tokens(x, config=cfg)
    if launch.op == "segment_norm_gelu":
        M, C = s["M"], s["C"]
        acc = torch.randn(M, C, device=device).to(dtype)
        table = torch.randn(max(1, M // 49), C, device=device).to(dtype)
        segment = torch.randint(0, table.shape[0], (M,), dtype=torch.int32, device=device)
        vectors = [torch.rand(C, device=device).to(dtype) + 0.5 for _ in range(5)]
        return lambda cfg: epilogue.segment_norm_gelu(
            acc, table, segment, *vectors, 1e-5, config=cfg
        )
    raise KeyError(f"no input recipe for op {launch.op!r}")


def _same(a: object, b: object) -> bool:
    if isinstance(a, tuple):
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    if a.is_floating_point():
        # Atomic float adds (backward) and float32 sums can differ in the last bits by order.
        return torch.allclose(a.float(), b.float(), atol=1e-2, rtol=1e-2)
    return torch.equal(a, b)


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
) -> Outcome:
    call = make_call(launch, device)
    width = launch.bucket.split("/", 1)[0]
    default = tunable.default[width] if device.type == "cuda" else configs[0]
    expected = call(default)
    timings: dict[int, float] = {}
    rejected: list[tuple[dict, str]] = []
    for i, config in enumerate(configs):
        try:
            if not _same(call(config), expected):
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
