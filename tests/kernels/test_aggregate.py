"""Triton fused gather + max(-relative) aggregation and its backward against the reference."""

from __future__ import annotations

import pytest
import torch

from kernels import reference
from kernels.aggregate import kernel as aggregate
from tests.helpers import DTYPES, TOLERANCE, assert_close, poisoned


def _inputs(M, C, K, dtype, device):
    x = torch.randn(M, C).to(dtype)
    nbr = torch.randint(0, M, (M, K), dtype=torch.int32)
    nbr[:, 0] = torch.arange(M, dtype=torch.int32)  # self loop, as in-partition k-NN gives
    return x.to(device), nbr.to(device)


@pytest.mark.parametrize("relative", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "M,C,K", [(1, 8, 1), (49, 24, 9), (196, 40, 18), (77, 130, 32), (784, 20, 12)]
)
def test_forward_matches_reference(device, M, C, K, dtype, relative):
    x, nbr = _inputs(M, C, K, dtype, device)
    out = poisoned((M, C), dtype, device)
    slot = poisoned((M, C), torch.uint8, device, value=255)
    aggregate.launch_max_aggregate(x, nbr, relative, True, out=(out, slot))
    expected, expected_slot = reference.max_aggregate(x.cpu(), nbr.cpu(), relative)
    assert not torch.isnan(out).any() and not (slot == 255).any(), "unwritten outputs"
    assert torch.equal(slot.cpu(), expected_slot)
    # Relative values are a float32 difference rounded once more to bf16/fp16: one ulp.
    assert_close(out.cpu(), expected)


@pytest.mark.parametrize("relative", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,C,K", [(1, 8, 1), (49, 24, 9), (77, 130, 32)])
def test_forward_without_argslot_takes_the_max_in_the_input_dtype(device, M, C, K, dtype, relative):
    """The inference path (no slots): the maximum in x's own dtype, NaN winning over numbers
    (one NaN row, a row of -inf and a row of +inf among the inputs)."""
    x, nbr = _inputs(M, C, K, dtype, device)
    x[M // 2, : C // 2] = float("nan")
    x[M // 3] = float("-inf")
    x[M // 4, 0] = float("inf")
    out = poisoned((M, C), dtype, device, value=7.0)
    no_slots = torch.empty(0, dtype=torch.uint8, device=device)
    aggregate.launch_max_aggregate(x, nbr, relative, False, out=(out, no_slots))
    expected, _ = reference.max_aggregate(x.cpu(), nbr.cpu(), relative)
    # The maximum is exact; a relative value is a float32 difference rounded to x's dtype once
    # more than the reference's (one ulp of bf16/fp16).
    atol, rtol = TOLERANCE[dtype] if relative else (0, 0)
    torch.testing.assert_close(out.cpu(), expected, equal_nan=True, atol=atol, rtol=rtol)


def test_ties_go_to_the_first_slot(device):
    x = torch.randint(-2, 3, (40, 12)).float().to(device)  # many exact ties
    nbr = torch.randint(0, 40, (40, 6), dtype=torch.int32).to(device)
    _, slot = aggregate.launch_max_aggregate(x, nbr, True, True)
    assert torch.equal(slot.cpu(), reference.max_aggregate(x.cpu(), nbr.cpu(), True)[1])


@pytest.mark.parametrize("relative", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_reference(device, dtype, relative):
    x, nbr = _inputs(90, 37, 9, dtype, device)
    _, slot = reference.max_aggregate(x.cpu(), nbr.cpu(), relative)
    grad = torch.randn(90, 37).to(dtype)
    got = aggregate.launch_max_aggregate_backward(grad.to(device), nbr, slot.to(device), relative)
    expected = reference.max_aggregate_backward(grad, nbr.cpu(), slot, relative)
    assert got.dtype == dtype
    assert_close(got.cpu(), expected)


@pytest.mark.parametrize("config", aggregate.MAX_AGGREGATE.interpret_space)
def test_every_interpreter_config(device, config):
    x, nbr = _inputs(70, 50, 5, torch.float32, device)
    out, slot = aggregate.launch_max_aggregate(x, nbr, True, True, config=config)
    e_out, e_slot = reference.max_aggregate(x.cpu(), nbr.cpu(), True)
    assert torch.equal(out.cpu(), e_out) and torch.equal(slot.cpu(), e_slot)
    grad = torch.randn(70, 50).to(device)
    got = aggregate.launch_max_aggregate_backward(grad, nbr, slot, True, config=config)
    torch.testing.assert_close(
        got.cpu(), reference.max_aggregate_backward(grad.cpu(), nbr.cpu(), e_slot, True)
    )
