"""Batched k-means, the launchers: the tunables of the three paths, the choice among them, and the
launches (see :mod:`kernels.kmeans.kernels` for the paths themselves)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton

from .._common import INDEX_DTYPE, dot_precision, next_power_of_2, target_capability
from ..tuning import Tunable, TuneCase, batch_bucket, split_launch_options, width_tag
from . import spaces
from .kernels import (
    _accumulate_block,
    _blocks_changed,
    _blocks_counts,
    _centroid_slice,
    _kmeans_finish,
    _kmeans_kernel,
    _kmeans_resident_kernel,
    _kmeans_step,
    _label_block,
    _lloyd_pass,
    _nearest_cluster,
    _new_means,
    _resident_pass,
    _seed_centroids,
)
from .reference import kmeans_init_index, kmeans_objective
from .spaces import RESIDENT_MAX_CHANNELS, RESIDENT_MAX_ROWS


def _bucket(B: int, N: int, C: int, kappa: int) -> str:
    return f"N{N}/C{C}/k{kappa}/B{batch_bucket(B)}"


def _layer_launch(B: int, N: int, C: int, kappa: int, K: int, dtype: torch.dtype):
    """A DEGC layer clusters its B images' N nodes of C channels into kappa clusters."""
    return dtype, {"B": B, "N": N, "C": C, "kappa": kappa}


def _resident_layer_launch(B: int, N: int, C: int, kappa: int, K: int, dtype: torch.dtype):
    if not resident_fits(N, C, kappa):
        return None
    return _layer_launch(B, N, C, kappa, K, dtype)


def _tune_call(path: str):
    """The tuner's recipe for one path: the model's L2-normalised features; a config agrees with
    the default when it finds an equally good clustering (:func:`same_clustering`)."""

    def call(shape: dict, dtype: torch.dtype, device: torch.device) -> TuneCase:
        B, N, C = shape["B"], shape["N"], shape["C"]
        x = F.normalize(torch.randn(B * N, C, device=device), dim=-1).to(dtype).reshape(B, N, C)
        return TuneCase(
            lambda config: launch_kmeans(x, shape["kappa"], 20, config=config, path=path),
            lambda output, expected: same_clustering(x, output, expected),
        )

    return call


def same_clustering(x: torch.Tensor, output: tuple, expected: tuple) -> bool:
    """Whether ``output = (labels, centroids, iterations)`` of k-means on x is as good an answer
    as ``expected``: labels in range, finite centroids, and each image's objective
    (:func:`kernels.kmeans.reference.kmeans_objective`) equal within float tolerance. Labels may
    differ: block sizes sum in another order, and a node almost equidistant from two centroids
    may then go the other way (the objective moves by about that gap, a rounding error)."""
    labels, centroids, _ = output
    kappa = expected[1].shape[1]
    if labels.shape != expected[0].shape or int(labels.min()) < 0 or int(labels.max()) >= kappa:
        return False
    if not torch.isfinite(centroids).all():
        return False
    got = kmeans_objective(x, labels, centroids)
    want = kmeans_objective(x, expected[0], expected[1])
    rtol = 1e-5 if x.dtype == torch.float32 else 1e-3
    return bool(((got - want).abs() <= rtol * want.abs() + 1e-9).all())


def _aot_constants(dtype: torch.dtype, config: dict) -> dict:
    """The widest cluster padding the ops accept (kappa 16)."""
    return {
        "KAPPA": 16,
        "KAPPA_PAD": 16,
        "DOT_PRECISION": dot_precision(dtype)[0],
        "UPCAST": False,
    }


_INDEX_POINTERS = {"labels_ptr": "*i32", "iterations_ptr": "*i32"}


def _fp32(*names: str) -> dict[str, str]:
    """The float32 buffers (centroids, sums) among a kernel's pointers."""
    return {f"{name}_ptr": "*fp32" for name in names}


#: What the image and split paths share: one launch shape and bucket per layer, tiny tiles
#: under the interpreter.
_SHAPES = {
    "bucket_fn": _bucket,
    "layer_launch": _layer_launch,
    "interpret_space": spaces.INTERPRET_SPACE,
}

KMEANS = Tunable(
    name="kmeans",
    kernels=[
        _kmeans_kernel,
        _lloyd_pass,
        _label_block,
        _nearest_cluster,
        _centroid_slice,
        _accumulate_block,
        _new_means,
        _seed_centroids,
    ],
    space={"e2": spaces.IMAGE_SPACE_16BIT, "e4": spaces.IMAGE_SPACE_32BIT},
    default=spaces.IMAGE_DEFAULT,
    **_SHAPES,
    tune_call=_tune_call("image"),
    pointer_types={**_INDEX_POINTERS, "scratch_labels_ptr": "*i32", **_fp32("centroids", "sums")},
    aot_constants=_aot_constants,
)

KMEANS_SPLIT = Tunable(
    name="kmeans_split",
    kernels=[
        _kmeans_step,
        _kmeans_finish,
        _blocks_changed,
        _blocks_counts,
        _label_block,
        _nearest_cluster,
        _centroid_slice,
        _accumulate_block,
    ],
    space=spaces.SPLIT_SPACE,
    default=spaces.SPLIT_DEFAULT,
    **_SHAPES,
    tune_call=_tune_call("split"),
    pointer_types={
        **_INDEX_POINTERS,
        **_fp32("centroids", "partial_sums", "partial_counts"),
        "changed_ptr": "*i32",
    },
    aot_constants=lambda dtype, config: {"FIRST": False, **_aot_constants(dtype, config)},
)

KMEANS_RESIDENT = Tunable(
    name="kmeans_resident",
    kernels=[_kmeans_resident_kernel, _resident_pass, _nearest_cluster],
    widths=("e2",),
    archs=(90,),
    min_triton=(3, 8),
    space=spaces.RESIDENT_SPACE,
    default=spaces.RESIDENT_DEFAULT,
    interpret_space=spaces.RESIDENT_INTERPRET_SPACE,
    bucket_fn=_bucket,
    layer_launch=_resident_layer_launch,
    tune_call=_tune_call("resident"),
    pointer_types={**_INDEX_POINTERS, **_fp32("centroids")},
    aot_constants=lambda dtype, config: {
        **_aot_constants(dtype, config),
        "BLOCK_N": RESIDENT_MAX_ROWS,
        "NUM_CHUNKS": RESIDENT_MAX_CHANNELS // config["BLOCK_C"],
    },
)

#: The split path pays a launch per Lloyd iteration (max_iters + 2 launches) to use several SMs
#: per image; one program per image runs the whole loop in one launch but on one SM.
#: Estimated (no GPU timing yet, ``python -m reports.static``, H100 bf16, k-means per forward):
#: the split wins when few images carry much work each: CViG-B† 1.3 vs 2.7 ms at batch 1, 1.9
#: vs 2.7 at 16 and 3.5 vs 4.1 at 32, but 6.6 vs 4.1 ms at batch 64; CViG-B (196 x 640 per
#: image) 1.0 vs 0.75 ms at batch 1.
SPLIT_MAX_IMAGES = 32
SPLIT_MIN_WORK = 256 * 1024  # N * C per image

PATHS = ("image", "split", "resident")


def use_split(B: int, N: int, C: int) -> bool:
    """Whether :func:`kmeans` runs the split path by default for this shape (when the resident
    path does not apply)."""
    return B <= SPLIT_MAX_IMAGES and N * C >= SPLIT_MIN_WORK


def resident_fits(N: int, C: int, num_clusters: int) -> bool:
    """Whether an image of N nodes x C channels fits the resident kernel."""
    return N <= RESIDENT_MAX_ROWS and C <= RESIDENT_MAX_CHANNELS and num_clusters <= 16


def default_path(x: torch.Tensor, num_clusters: int) -> str:
    """The path :func:`kmeans` takes for ``x`` ``(B, N, C)`` unless told: ``"resident"`` for
    fp16/bf16 images that fit on an sm_90 GPU under Triton >= 3.8 (estimated, ``reports.static``,
    H100 bf16: 105 vs 180 us of k-means a CViG-Ti forward at batch 1, 204 vs 592 at batch 256:
    no pass re-reads the image from L2), else ``"split"`` for a few large images
    (:func:`use_split`), else ``"image"``."""
    B, N, C = x.shape
    if resident_supported(x) and resident_fits(N, C, num_clusters):
        return "resident"
    return "split" if use_split(B, N, C) else "image"


def resident_supported(x: torch.Tensor) -> bool:
    """Whether the resident kernel is launched for ``x``'s dtype on the GPU ``x`` is on (or a
    launch recording names), under the installed Triton."""
    capability = target_capability(x)
    if capability is None:
        return False
    return KMEANS_RESIDENT.builds_for(width_tag(x.dtype), capability[0] * 10 + capability[1])


def launch_kmeans(
    x: torch.Tensor,
    num_clusters: int,
    max_iters: int = 20,
    *,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    config: dict | None = None,
    path: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x ``(B, N, C)`` -> labels ``(B, N)`` int32, centroids ``(B, kappa, C)`` in ``x.dtype``,
    iterations ``(B,)`` int32, by one of three paths with the same results (``path``, default
    :func:`default_path`): ``"image"`` (:func:`_kmeans_kernel`, one program per image, one
    launch), ``"split"`` (several programs per image, a launch per iteration) or ``"resident"``
    (:func:`_kmeans_resident_kernel`: one program per image that reads it once; N <= 256,
    C <= 192).

    ``out`` may pass preallocated ``(labels, iterations)``; ``config`` overrides the tuned one.
    """
    B, N, C = x.shape
    if path is None:
        path = default_path(x, num_clusters)
    if path not in PATHS:
        raise ValueError(f"kmeans: argument 'path' must be one of {PATHS} or None, got {path!r}")
    if path == "resident" and not resident_fits(N, C, num_clusters):
        raise ValueError(
            f"kmeans: path 'resident' takes images of at most {RESIDENT_MAX_ROWS} nodes and "
            f"{RESIDENT_MAX_CHANNELS} channels, got x of shape {tuple(x.shape)}"
        )
    if x.stride(2) != 1:
        x = x.contiguous()
    kappa_pad = max(16, next_power_of_2(num_clusters))
    if out is None:
        out = (
            torch.empty(B, N, dtype=INDEX_DTYPE, device=x.device),
            torch.empty(B, dtype=INDEX_DTYPE, device=x.device),
        )
    labels, iterations = out
    centroids = torch.empty(B, kappa_pad, C, dtype=torch.float32, device=x.device)
    if B == 0 or N == 0:
        return labels, centroids[:, :num_clusters].to(x.dtype).contiguous(), iterations
    precision, upcast = dot_precision(x.dtype)
    if path == "split":
        _kmeans_split(
            x, num_clusters, max_iters, labels, iterations, centroids, config, precision, upcast
        )
    elif path == "resident":
        if config is None:
            if x.dtype not in (torch.float16, torch.bfloat16):
                raise ValueError(
                    "kmeans: path 'resident' is tuned for float16 / bfloat16 features; pass a "
                    f"config to run it on {str(x.dtype).replace('torch.', '')}"
                )
            bucket = KMEANS_RESIDENT.bucket(x.dtype, B=B, N=N, C=C, kappa=num_clusters)
            config = KMEANS_RESIDENT.config(x.device, bucket)
        meta, opts = split_launch_options(config)
        _kmeans_resident_kernel[(B,)](
            x, labels, centroids, iterations, N, C, x.stride(0), x.stride(1), max_iters,
            KAPPA=num_clusters, KAPPA_PAD=kappa_pad, BLOCK_N=max(16, next_power_of_2(N)),
            NUM_CHUNKS=triton.cdiv(C, meta["BLOCK_C"]), DOT_PRECISION=precision, UPCAST=upcast,
            **meta, **opts,
        )  # fmt: skip
    else:
        config = config or KMEANS.config(
            x.device, KMEANS.bucket(x.dtype, B=B, N=N, C=C, kappa=num_clusters)
        )
        meta, opts = split_launch_options(config)
        sums = torch.empty(B, kappa_pad, C, dtype=torch.float32, device=x.device)
        scratch_labels = torch.empty(B, N, dtype=INDEX_DTYPE, device=x.device)
        _kmeans_kernel[(B,)](
            x, labels, scratch_labels, centroids, sums, iterations, N, C, x.stride(0),
            x.stride(1), max_iters, KAPPA=num_clusters, KAPPA_PAD=kappa_pad,
            DOT_PRECISION=precision, UPCAST=upcast, **meta, **opts,
        )  # fmt: skip
    return labels, centroids[:, :num_clusters].to(x.dtype).contiguous(), iterations


def _kmeans_split(
    x: torch.Tensor,
    num_clusters: int,
    max_iters: int,
    labels: torch.Tensor,
    iterations: torch.Tensor,
    centroids: torch.Tensor,
    config: dict | None,
    precision: str,
    upcast: bool,
) -> None:
    """The split path: ``max_iters + 1`` step launches (the first assignment, then one per Lloyd
    iteration, each reducing the previous step's sums itself) and a final launch for the
    centroids; decided per image on the device (a converged image's programs exit at once), no
    host sync. ``precision``, ``upcast``: :func:`dot_precision` of x's dtype."""
    B, N, C = x.shape
    kappa_pad = centroids.shape[1]
    config = config or KMEANS_SPLIT.config(
        x.device, KMEANS_SPLIT.bucket(x.dtype, B=B, N=N, C=C, kappa=num_clusters)
    )
    meta, opts = split_launch_options(config)
    num_blocks = triton.cdiv(N, meta["BLOCK_N"])
    seeds = kmeans_init_index(N, num_clusters, device=x.device)  # no host copy
    steps = torch.zeros(2, B, kappa_pad, C, dtype=torch.float32, device=x.device)
    steps[0, :, :num_clusters] = x[:, seeds].float()  # step 0 reads the seeds from parity 0
    iterations.zero_()
    partial_sums = torch.empty(
        2, B, num_blocks, num_clusters, C, dtype=torch.float32, device=x.device
    )
    partial_counts = torch.empty(2, B, num_blocks, kappa_pad, dtype=torch.float32, device=x.device)
    changed = torch.empty(2, B, num_blocks, dtype=torch.int32, device=x.device)
    buffers = (steps, partial_sums, partial_counts, changed, iterations)
    for step in range(max_iters + 1):
        _kmeans_step[(B, num_blocks)](
            x, labels, *buffers, N, C, x.stride(0), x.stride(1), num_blocks, step,
            FIRST=step == 0, KAPPA=num_clusters, KAPPA_PAD=kappa_pad,
            DOT_PRECISION=precision, UPCAST=upcast, **meta, **opts,
        )  # fmt: skip
    _kmeans_finish[(B, triton.cdiv(C, meta["BLOCK_C"]))](
        steps, partial_sums, partial_counts, changed, iterations, centroids, C, num_blocks,
        max_iters % 2, KAPPA=num_clusters, KAPPA_PAD=kappa_pad, BLOCK_C=meta["BLOCK_C"], **opts,
    )  # fmt: skip
