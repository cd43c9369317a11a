"""The local update's fused inference epilogue against the reference and the unfused layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kernels import reference
from kernels.epilogue import kernel as epilogue
from tests.helpers import DTYPES, assert_close, poisoned


def _inputs(M, C, P, dtype, device, *, generator=None):
    acc = torch.randn(M, C, generator=generator)
    table = torch.randn(P, C, generator=generator)
    segment = torch.randint(0, P, (M,), dtype=torch.int32, generator=generator)
    bias, weight, shift = (torch.randn(C, generator=generator) for _ in range(3))
    mean = torch.randn(C, generator=generator)
    var = torch.rand(C, generator=generator) + 0.1
    norm = torch.stack([bias, weight, shift, mean, var])
    acc, table, norm = (t.to(dtype).to(device) for t in (acc, table, norm))
    return acc, table, segment.to(device), norm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,C,P", [(1, 8, 1), (49, 24, 4), (196, 384, 4), (77, 130, 12)])
def test_matches_reference(device, M, C, P, dtype):
    acc, table, segment, norm = _inputs(M, C, P, dtype, device)
    out = poisoned((M, C), dtype, device)
    config = epilogue.SEGMENT_NORM_GELU.interpret_space[0] if device.type == "cpu" else None
    epilogue.launch_segment_norm_gelu(acc, table, segment, norm, 1e-5, out=out, config=config)
    assert not torch.isnan(out).any(), "unwritten outputs"
    expected = reference.segment_norm_gelu(
        acc.cpu().double(), table.cpu().double(), segment.cpu(),
        norm.cpu().double(), 1e-5,
    )  # fmt: skip
    assert_close(out.cpu(), expected, dtype)


def test_the_reference_is_the_unfused_layers():
    """The contract is literally GELU(BatchNorm1d(acc + bias + table[segment])) in eval mode."""
    acc, table, segment, norm = _inputs(30, 12, 3, torch.float64, "cpu")
    bias, weight, shift, mean, var = norm
    batch_norm = nn.BatchNorm1d(12).double().eval()
    with torch.no_grad():
        batch_norm.weight.copy_(weight), batch_norm.bias.copy_(shift)
        batch_norm.running_mean.copy_(mean), batch_norm.running_var.copy_(var)
        expected = nn.GELU()(batch_norm(acc + bias + table[segment.long()]))
    got = reference.segment_norm_gelu(acc, table, segment, norm, 1e-5)
    torch.testing.assert_close(got, expected)


def test_out_of_range_segments_are_clamped_and_nan_propagates(device):
    acc, table, segment, norm = _inputs(20, 16, 3, torch.float32, device)
    segment[0], segment[1] = -5, 99  # read partitions 0 and P - 1, never outside the table
    acc[2, 3] = float("nan")
    config = epilogue.SEGMENT_NORM_GELU.interpret_space[1] if device.type == "cpu" else None
    out = epilogue.launch_segment_norm_gelu(acc, table, segment, norm, 1e-5, config=config).cpu()
    expected = reference.segment_norm_gelu(acc.cpu(), table.cpu(), segment.cpu(), norm.cpu(), 1e-5)
    torch.testing.assert_close(out, expected, equal_nan=True, atol=1e-5, rtol=1e-5)
    assert torch.isnan(out[2, 3]) and torch.isfinite(out[[0, 1]]).all()


@pytest.mark.parametrize("local_update", ["mrgcn", "graphsage", "gin"])
def test_a_layer_in_inference_takes_the_fused_epilogue_with_the_same_result(
    monkeypatch, local_update
):
    """The DEGC layer in eval mode without gradient (the fused op) gives what it gives with
    gradient enabled (the separate bias, gather, batch norm and GELU)."""
    from clustervig import graph_updates
    from clustervig.degc import DEGC

    calls = []
    fused_op = graph_updates.segment_norm_gelu
    monkeypatch.setattr(
        graph_updates, "segment_norm_gelu", lambda *a: calls.append(1) or fused_op(*a)
    )
    torch.manual_seed(0)
    layer = DEGC(24, k=5, num_clusters=3, local_update=local_update).eval()
    for module in layer.modules():
        if isinstance(module, nn.BatchNorm1d):  # running statistics that matter
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 24, 6, 7)
    with torch.no_grad():
        fused = layer(x)
    assert calls, "the fused epilogue did not run"
    calls.clear()
    unfused = layer(x).detach()
    assert not calls, "the fused epilogue ran with gradient enabled"
    torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-5)
