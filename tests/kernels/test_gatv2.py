"""GATv2 attention over the centroid graph against the reference and the layer it serves."""

from __future__ import annotations

import pytest
import torch

from kernels import reference
from kernels.gatv2 import kernel as gatv2
from tests.helpers import DTYPES, assert_close, poisoned


def _inputs(B, kappa, C, dtype, device):
    source, target = torch.randn(B, kappa, C), torch.randn(B, kappa, C)
    att, bias = torch.randn(C), torch.randn(C)
    return [t.to(dtype).to(device) for t in (source, target, att, bias)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,kappa,C", [(1, 1, 8), (2, 4, 192), (3, 6, 40), (1, 16, 17)])
def test_matches_reference(device, B, kappa, C, dtype):
    source, target, att, bias = _inputs(B, kappa, C, dtype, device)
    out = poisoned((B, kappa, C), dtype, device)
    config = gatv2.GATV2_ATTENTION.interpret_space[0] if device.type == "cpu" else None
    gatv2.launch_gatv2_attention(source, target, att, bias, 0.2, out=out, config=config)
    assert not torch.isnan(out).any(), "unwritten outputs"
    expected = reference.gatv2_attention(
        source.cpu().double(), target.cpu().double(), att.cpu().double(), bias.cpu().double(), 0.2
    )
    assert_close(out.cpu(), expected, dtype)


def test_nan_stays_in_its_image(device):
    source, target, att, bias = _inputs(3, 4, 24, torch.float32, device)
    source[1, 2, 5] = float("nan")
    config = gatv2.GATV2_ATTENTION.interpret_space[1] if device.type == "cpu" else None
    out = gatv2.launch_gatv2_attention(source, target, att, bias, 0.2, config=config).cpu()
    assert torch.isnan(out[1]).any() and torch.isfinite(out[[0, 2]]).all()


def test_the_layer_in_inference_takes_the_op_with_the_same_result(monkeypatch):
    from clustervig import graph_updates

    calls = []
    op = graph_updates.gatv2_attention
    monkeypatch.setattr(graph_updates, "gatv2_attention", lambda *a: calls.append(1) or op(*a))
    torch.manual_seed(0)
    layer = graph_updates.GATv2GlobalUpdate(20)
    z = torch.randn(3, 5, 20)
    with torch.no_grad():
        fused = layer(z)
    assert calls
    torch.testing.assert_close(fused, layer(z).detach(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("wrong", ["target", "att", "bias"])
def test_arguments_of_another_width_are_rejected_naming_them(wrong):
    import kernels

    names = ("source", "target", "att", "bias")
    args = dict(zip(names, _inputs(2, 4, 12, torch.float32, "cpu"), strict=True))
    args[wrong] = args[wrong][..., :11]
    with pytest.raises(ValueError, match="'target' \\(B, kappa, C\\), 'att' and 'bias'"):
        kernels.gatv2_attention(*args.values(), 0.2)


def test_opcheck():
    from kernels.gatv2 import GATV2_ATTENTION

    torch.library.opcheck(
        GATV2_ATTENTION.custom_op, (*_inputs(2, 4, 12, torch.float32, "cpu"), 0.2)
    )
