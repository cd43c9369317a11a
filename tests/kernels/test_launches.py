"""Recording the Triton launches of a forward on meta tensors (no GPU, nothing executed)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from kernels import batched_kmeans, partition, partition_knn
from kernels.launches import record_launches


def test_ops_on_meta_tensors_record_their_launches_without_running():
    x = torch.empty(3, 50, 64, device="meta")
    with record_launches() as rec:
        rec.label = "here"
        labels, centroids, _ = batched_kmeans(x, 4, 20)
        perm, inverse, offsets, _ = partition(labels, 4)
        nbr = partition_knn(x.reshape(150, 64), offsets, 9, 50)
    assert [launch.op for launch in rec.launches] == ["kmeans", "partition", "partition_knn"]
    assert all(launch.label == "here" for launch in rec.launches)
    kmeans = rec.launches[0]
    assert kmeans.kernel == "_kmeans_kernel" and kmeans.grid == (3, 1, 1)
    assert kmeans.args["x_ptr"].shape == (3, 50, 64) and kmeans.constexprs["KAPPA"] == 4
    assert nbr.shape == (150, 9) and nbr.device.type == "meta"
    assert centroids.shape == (3, 4, 64)


def test_outside_the_recorder_meta_tensors_use_the_fake_implementations():
    x = torch.empty(2, 20, 16, device="meta")
    with record_launches() as rec:
        pass
    labels, _, _ = batched_kmeans(x, 2, 5)
    assert labels.shape == (2, 20) and not rec.launches


def test_a_recorded_launch_compiles_for_sm90_as_the_jit_specialises_it():
    """In a fresh process without TRITON_INTERPRET: compiling needs the real JIT kernels."""
    code = (
        "import torch\n"
        "from kernels import batched_kmeans\n"
        "from kernels.launches import compile_launch, record_launches\n"
        "x = torch.empty(2, 196, 192, device='meta', dtype=torch.bfloat16)\n"
        "with record_launches() as rec:\n"
        "    batched_kmeans(x, 4, 20)\n"
        "compiled = compile_launch(rec.launches[0], 90)\n"
        "print(len(compiled.asm['cubin']) > 0, compiled.metadata.shared > 0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True"]
