"""An op is its folder: changing one op's kernel needs no change outside ``kernels/<op>/``.

A copy of the tree gets an edit in ``kernels/aggregate/kernel.py`` alone, the kind that used
to ripple through a dozen files (the hand-typed AOT signature, the tuner's input recipe, the
self-check, the op registry): the forward kernel's row-stride argument is renamed and the
kernel gains an argument of its own type (a per-row mask pointer it declares, of a type the
AOT compile has to be told). The tools that work on every op then run on the copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IGNORED = shutil.ignore_patterns(
    ".git", ".venv*", "__pycache__", "*.egg-info", "clustervig-reports", "results", "figures"
)


def _edit_the_aggregation_kernel(tree: Path) -> None:
    path = tree / "kernels" / "aggregate" / "kernel.py"
    text = path.read_text()
    edits = [
        # the runtime argument renamed, in the kernel and where it is read
        ("    stride_xm,\n    K: tl.constexpr,\n    RELATIVE",
         "    row_stride,\n    K: tl.constexpr,\n    RELATIVE"),
        ("source[:, None] * stride_xm", "source[:, None] * row_stride"),
        ("rows64[:, None] * stride_xm", "rows64[:, None] * row_stride"),
        # a new pointer argument of its own type, declared in the kernel's own spec
        ("    slot_ptr,  # *u8 (M, C) contiguous: winning neighbour slot (written if SAVE_SLOT)\n",
         "    slot_ptr,  # *u8 (M, C) contiguous: winning neighbour slot (written if SAVE_SLOT)\n"
         "    unused_ptr,  # *i8: an argument the kernel does not read\n"),
        ('pointer_types={"nbr_ptr": "*i32", "slot_ptr": "*u8"},',
         'pointer_types={"nbr_ptr": "*i32", "slot_ptr": "*u8", "unused_ptr": "*i8"},'),
        ("        argslot if with_argslot else result,\n",
         "        argslot if with_argslot else result,\n        nbr,\n"),
    ]  # fmt: skip
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.write_text(text)


def _run(tree: Path, code: str, *, interpret: bool, timeout: int = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(tree)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_changing_one_ops_kernel_touches_only_its_folder(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=IGNORED)
    _edit_the_aggregation_kernel(tree)

    # The copy is what runs, and the edit is in it.
    where = _run(tree, "import kernels.aggregate.kernel as k; print(k.__file__)", interpret=True)
    assert where.strip() == str(tree / "kernels" / "aggregate" / "kernel.py")

    # The op's self-check (its cases, through the registry) under the interpreter, and the
    # tuner's recipe on one config.
    checked = _run(
        tree,
        "import torch\n"
        "from kernels import selfcheck\n"
        "from kernels.registry import tunables\n"
        "r = [selfcheck.check('max_aggregate', d, torch.device('cpu')) for d in\n"
        "     (torch.float32, torch.bfloat16)]\n"
        "assert all(x.ok for x in r), [x.detail for x in r]\n"
        "t = tunables()['max_aggregate']\n"
        "case = t.tune_call({'M': 40, 'C': 24, 'K': 5}, torch.float32, torch.device('cpu'))\n"
        "out, _ = case.run(t.interpret_space[0])\n"
        "print('checked', out.shape[0])\n",
        interpret=True,
    )
    assert "checked 40" in checked

    # The ahead-of-time compile: the signature follows the kernel's new arguments.
    compiled = _run(
        tree,
        "import torch\n"
        "from kernels.resources import REGISTRY, compile_kernel, usage_fields\n"
        "t = REGISTRY['max_aggregate']\n"
        "signature, _ = t.aot_signature(torch.float16, t.default['e2'])\n"
        "assert signature['row_stride'] == 'i32' and signature['unused_ptr'] == '*i8'\n"
        "assert 'stride_xm' not in signature\n"
        "fields = usage_fields(compile_kernel(t, t.default['e2'], torch.float16, 90))\n"
        "print('registers', fields['REG'])\n",
        interpret=False,
    )
    assert "registers" in compiled

    # The layering rules still hold in the edited tree.
    layering = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_layering.py"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert layering.returncode == 0, layering.stdout[-3000:]
