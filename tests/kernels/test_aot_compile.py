"""Every kernel and every autotune config compiles ahead of time for sm_80 and sm_90 (no GPU
needed) without register spills, under whichever Triton is installed: CI runs this file under the
newest Triton and under the oldest one ``pyproject.toml`` supports.

The test suite runs the kernels under the Triton interpreter, whose kernels cannot be compiled,
so these tests compile in a subprocess without TRITON_INTERPRET.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kernels.registry import tunables
from kernels.resources import ARCHS

REGISTRY = tunables()

ROOT = Path(__file__).resolve().parents[2]


def _compile_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def _run_script(script: str, timeout: int) -> str:
    """Run ``script`` in a fresh interpreter without the Triton interpreter (real compiles);
    assert it succeeded and return its standard output."""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=_compile_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def run_resources(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    env = _compile_env()
    out = tmp_path / "usage.json"
    proc = subprocess.run(
        [sys.executable, "-m", "kernels.resources", *args, "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    rows = json.loads(out.read_text()) if out.exists() else []
    return proc, rows


@pytest.mark.slow
@pytest.mark.parametrize("op", sorted(REGISTRY))
def test_every_config_compiles_for_every_arch_without_spills(op, tmp_path):
    # One dtype per width: fp16 and bf16 share the 16-bit space and compile alike.
    proc, rows = run_resources(tmp_path, "--ops", op, "--all-configs", "--dtypes", "fp32", "bf16")
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    tunable = REGISTRY[op]
    # A kernel launched only on some GPUs or Triton versions is compiled only for those.
    builds = [(w, a) for w in tunable.widths for a in ARCHS if tunable.builds_for(w, a)]
    expected = sum(len(tunable.space[w]) for w, _ in builds)
    assert len(rows) == expected, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert {r["arch"] for r in rows} == {a for _, a in builds}
    assert all(r["registers"] > 0 for r in rows)
    spilled = [r for r in rows if r["spills"]]
    assert not spilled, "\n".join(
        f"sm_{r['arch']} {r['dtype']} {r['config']}: stack {r['stack']} B, local {r['local']} B"
        for r in spilled
    )
    assert proc.returncode == 0


def test_resource_report_prints_every_default_build(tmp_path):
    proc, rows = run_resources(tmp_path, "--dtypes", "fp16")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    builds = {op: sum(t.builds_for("e2", arch) for arch in ARCHS) for op, t in REGISTRY.items()}
    assert len(rows) == sum(builds.values())
    for op, count in builds.items():
        assert proc.stdout.count(f"{op} ") >= count
    assert "no spills" in proc.stdout


@pytest.mark.interpreter
def test_compiling_interpreted_kernels_fails_clearly():
    from kernels import resources

    if not os.environ.get("TRITON_INTERPRET"):
        pytest.skip("kernels are real JIT functions in this run")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        resources.compile_kernel(
            REGISTRY["permute_rows"],
            REGISTRY["permute_rows"].default["e4"],
            __import__("torch").float32,
            90,
        )


_ASSEMBLY = """
import torch
from kernels import resources
from kernels.aggregate.kernel import MAX_AGGREGATE_BACKWARD as T
for dtype in (torch.float32, torch.bfloat16):
    compiled = resources.compile_kernel(T, T.default["e2"], dtype, 90)
    print("=====PTX"); print(compiled.asm["ptx"])
    print("=====SASS"); print(resources.disassemble(compiled))
"""


@pytest.mark.slow
def test_aggregation_backward_atomics_are_relaxed_without_gpu_barriers():
    """The backward's float atomics are sums: relaxed, with no acquire/release semantics and no
    GPU-wide fence or L1 invalidation around them (what the default acq_rel would add)."""
    stdout = _run_script(_ASSEMBLY, timeout=600)
    ptx = "\n".join(part for part in stdout.split("=====PTX")[1:])
    atomics = re.findall(r"\b(?:atom|red)\.[\w.]+", ptx)
    assert atomics, "no atomic in the compiled backward"
    assert not [a for a in atomics if re.search(r"acq_rel|acquire|release", a)], atomics
    assert not re.search(r"\b(membar|fence)\.", ptx)
    sass = stdout.split("=====SASS", 1)[1]
    assert "REDG" in sass
    assert "MEMBAR" not in sass and "CCTL.IVALL" not in sass


_EVERY_K = """
import dataclasses
import json
import torch
from kernels.resources import ARCHS, REGISTRY, compile_kernel, usage_fields
knn = REGISTRY["partition_knn"]
spilled = []
for dtype, width in ((torch.bfloat16, "e2"), (torch.float32, "e4")):
    for k in range(9, 19):
        pad = 16 if k <= 16 else 32
        at_k = dataclasses.replace(
            knn, aot_constants=lambda d, c, k=k, pad=pad: {
                **knn.aot_constants(d, c), "K": k, "K_PAD": pad
            }
        )
        for arch in ARCHS:
            fields = usage_fields(compile_kernel(at_k, knn.default[width], dtype, arch))
            if fields.get("STACK", 0) or fields.get("LOCAL", 0):
                spilled.append([str(dtype), k, arch, fields])
print(json.dumps(spilled))
"""


@pytest.mark.slow
def test_knn_default_configs_compile_without_spills_at_every_model_k():
    """Spills depend on K (the loop over selection passes), erratically: the k-NN defaults are
    compiled at every K the models use (9..18), not only at the space's check K."""
    stdout = _run_script(_EVERY_K, timeout=1200)
    assert json.loads(stdout.strip().splitlines()[-1]) == []


_EVERY_KAPPA = """
import dataclasses
import json
import torch
from kernels.resources import REGISTRY, compile_kernel, usage_fields
resident = REGISTRY["kmeans_resident"]
shapes = [(kappa, 256, 3) for kappa in range(1, 17)] + [(16, 128, 3), (16, 64, 2), (4, 16, 1)]
spilled = []
if resident.builds_for("e2", 90):
    for kappa, rows, chunks in shapes:
        shaped = dataclasses.replace(
            resident, aot_constants=lambda d, c, s=(kappa, rows, chunks): {
                **resident.aot_constants(d, c), "KAPPA": s[0], "BLOCK_N": s[1], "NUM_CHUNKS": s[2]
            }
        )
        compiled = compile_kernel(shaped, resident.default["e2"], torch.bfloat16, 90)
        fields = usage_fields(compiled)
        if fields.get("STACK", 0) or fields.get("LOCAL", 0):
            spilled.append([kappa, rows, chunks, fields])
print(json.dumps(spilled))
"""


@pytest.mark.slow
def test_resident_kmeans_default_compiles_without_spills_for_every_kappa():
    """The resident k-means kernel uses nearly every register at 4 warps, and whether it spills
    depends on the constexprs: its default is compiled at every kappa the ops accept (on the
    widest tile it takes) and on smaller tiles, where the installed Triton launches it."""
    stdout = _run_script(_EVERY_KAPPA, timeout=1200)
    assert json.loads(stdout.strip().splitlines()[-1]) == []


_KMEANS_IR = """
import json
import torch
from kernels import resources
from kernels.kmeans import kernels as km
from kernels.kmeans.launch import KMEANS as T
ttir = resources.compile_kernel(T, T.default["e2"], torch.bfloat16, 90).asm["ttir"]
unspecialised = [p.name for p in km._kmeans_step.params if p.do_not_specialize]
print(json.dumps({"ttir": ttir, "unspecialised": unspecialised}))
"""


def _row_loops(ir: str) -> list[str]:
    """The bodies of the IR's loops over row blocks (``scf.for %n0 = ...``); a loop's closing
    brace is the first ``}`` line at its own indentation."""
    lines = ir.splitlines()
    bodies = []
    for i, line in enumerate(lines):
        if "scf.for %n0 " in line:
            indent = " " * (len(line) - len(line.lstrip()))
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith(indent + "}"))
            bodies.append("\n".join(lines[i + 1 : end]))
    return bodies


def test_image_kmeans_orders_its_sums_explicitly_and_compiles_once_per_shape():
    """Each row block of an image-path Lloyd pass stores the cluster sums in the dot's thread
    layout and the next block loads them in another: the row loop must hold an explicit barrier
    in the kernel's own IR (TTIR, before Triton adds any for its layout conversions). And the
    split path's step counter is not a specialisation key (steps 1, 16, 32 would each compile)."""
    out = json.loads(_run_script(_KMEANS_IR, timeout=600).strip().splitlines()[-1])
    accumulating = [b for b in _row_loops(out["ttir"]) if "tt.dot" in b and "tt.store" in b]
    assert len(accumulating) == 3, "expected the first pass and the two alternating passes"
    assert all(re.search(r"\b(gpu|ttg)\.barrier\b", body) for body in accumulating)
    assert out["unspecialised"] == ["step"]
