"""Recording the Triton launches of a forward on meta tensors (no GPU, nothing executed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
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


#: (model, batch, the GPU the launches are for, the k-means kernel its launcher takes there)
_HOST_TENSOR_CASES = [
    ("cvig_ti", 1, (9, 0), "_kmeans_resident_kernel"),
    ("cvig_ti", 256, (8, 0), "_kmeans_kernel"),
    ("cvig_s", 256, (9, 0), "_kmeans_kernel"),
    ("cvig_b", 1, (9, 0), "_kmeans_kernel"),
    ("cvig_b_hr", 1, (9, 0), "_kmeans_step"),
    ("cvig_b_hr", 256, (8, 0), "_kmeans_kernel"),
]


@pytest.mark.parametrize("name,batch,capability,kmeans_kernel", _HOST_TENSOR_CASES)
def test_no_launcher_makes_a_host_tensor(name, batch, capability, kmeans_kernel):
    """Every model's launches, every k-means path: no launcher creates, copies or reads a CPU
    tensor (on a GPU: a pageable copy and a stream sync per call, which CUDA graphs cannot
    capture). Checked inside the launchers, which the aten-level trace of the model cannot see
    into (custom ops are opaque there)."""
    from clustervig import create_model

    with torch.device("meta"):
        model = create_model(name).eval().to(torch.bfloat16)
    size = model.pretrained_cfg["input_size"][-1]
    x = torch.empty(batch, 3, size, size, device="meta", dtype=torch.bfloat16)
    with record_launches(capability) as rec, torch.no_grad():
        model(x)
    assert kmeans_kernel in {launch.kernel for launch in rec.launches}
    assert rec.host_ops == []


def test_training_launches_make_no_host_tensor_either():
    from clustervig import CViG

    with torch.device("meta"):
        model = CViG(channels=32, depth=2, grid=8, img_size=64, num_clusters=3, num_classes=10)
    x = torch.empty(2, 3, 64, 64, device="meta")
    with record_launches((9, 0)) as rec:
        model(x)[0].sum().backward()
    assert "_max_aggregate_backward_kernel" in {launch.kernel for launch in rec.launches}
    assert rec.host_ops == []


def test_a_host_tensor_in_a_launcher_is_noted(monkeypatch):
    """The check sees what it is for: the split path's seeds built on the host and copied."""
    from kernels.kmeans import launch

    real = launch.kmeans_init_index
    monkeypatch.setattr(
        launch, "kmeans_init_index", lambda N, k, device=None: real(N, k).to(device)
    )
    x = torch.empty(1, 784, 640, device="meta", dtype=torch.bfloat16)
    with record_launches((9, 0)) as rec:
        batched_kmeans(x, 6, 20)
    assert rec.host_ops and rec.host_ops[0].startswith("kmeans: aten.")
