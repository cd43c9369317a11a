"""Every kernel and every autotune config compiles ahead of time for sm_80 and sm_90 (no GPU
needed) without register spills.

The test suite runs the kernels under the Triton interpreter, whose kernels cannot be compiled,
so these tests run ``python -m kernels.resources`` in a subprocess without TRITON_INTERPRET.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels._tuning import WIDTHS, tunables

REGISTRY = tunables()

ROOT = Path(__file__).resolve().parents[2]


def run_resources(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
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
def test_every_config_compiles_for_sm80_and_sm90_without_spills(op, tmp_path):
    # One dtype per width: fp16 and bf16 share the 16-bit space and compile alike.
    proc, rows = run_resources(tmp_path, "--ops", op, "--all-configs", "--dtypes", "fp32", "bf16")
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    tunable = REGISTRY[op]
    expected = sum(len(tunable.space[w]) for w in WIDTHS) * 2  # two archs
    assert len(rows) == expected, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert {r["arch"] for r in rows} == {80, 90}
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
    assert len(rows) == len(REGISTRY) * 2
    for op in REGISTRY:
        assert proc.stdout.count(f"{op} ") >= 2
    assert "no spills" in proc.stdout


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
