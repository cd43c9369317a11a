"""The Triton interpreter as this project's tests use it: scalar arguments as loop bounds work
under every supported Triton and NumPy (Triton 3.6 with NumPy >= 2.4 needed a mend)."""

from __future__ import annotations

import pytest
import torch

from kernels import _common

pytestmark = pytest.mark.interpreter


def test_a_runtime_loop_bound_works_in_the_interpreter():
    import triton
    import triton.language as tl

    @triton.jit
    def row_sums(x_ptr, out_ptr, N, BLOCK: tl.constexpr):
        total = tl.zeros([BLOCK], dtype=tl.float32)
        for n0 in range(0, N, BLOCK):  # N is a runtime scalar: the interpreter's __index__
            offs = n0 + tl.arange(0, BLOCK)
            total += tl.load(x_ptr + offs, mask=offs < N, other=0.0)
        tl.store(out_ptr, tl.sum(total, axis=0))

    x = torch.arange(37, dtype=torch.float32)
    out = torch.full((1,), float("nan"))
    row_sums[(1,)](x, out, 37, BLOCK=8)
    assert out.item() == float(x.sum())


def test_the_mend_is_applied_once_and_only_where_needed():
    from triton.runtime import interpreter

    patch = interpreter._patch_lang_tensor
    assert _common.mend_interpreter_scalars() is False  # applied at import, or not needed
    assert interpreter._patch_lang_tensor is patch
