"""The centred nodes of a feature map against the reference; its gradient."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import reference
from kernels.center import kernel as center
from tests.helpers import DTYPES, assert_close, poisoned


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,C,H,W", [(1, 8, 1, 1), (2, 24, 7, 7), (1, 40, 14, 14), (3, 17, 5, 9)])
def test_matches_reference(device, B, C, H, W, dtype):
    x = (torch.randn(B, C, H, W) * 3 + torch.randn(1, C, 1, 1) * 10).to(dtype).to(device)
    out = poisoned((B, H * W, C), dtype, device)
    config = center.CENTER_TOKENS.interpret_space[0] if device.type == "cpu" else None
    center.launch_center_tokens(x, out=out, config=config)
    assert not torch.isnan(out).any(), "unwritten outputs"
    expected = reference.center_tokens(x.cpu().double())
    assert_close(out.cpu(), expected, dtype)
    torch.testing.assert_close(  # centred: the nodes' mean is ~0 in every channel
        out.cpu().double().mean(1), torch.zeros(B, C, dtype=torch.float64), atol=0.05, rtol=0
    )


def test_channels_last_and_nan_stay_in_their_image_and_channel(device):
    x = torch.randn(2, 12, 6, 5).contiguous(memory_format=torch.channels_last)
    x[1, 3, 2, 2] = float("nan")
    config = center.CENTER_TOKENS.interpret_space[1] if device.type == "cpu" else None
    out = center.launch_center_tokens(x.to(device), config=config).cpu()
    expected = reference.center_tokens(x)
    torch.testing.assert_close(out, expected, equal_nan=True, atol=1e-6, rtol=1e-6)
    assert torch.isnan(out[1, :, 3]).all() and torch.isfinite(out[0]).all()
    assert torch.isfinite(out[1, :, [0, 1, 2, 4]]).all()


def test_reference_is_the_eager_centring():
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    t = x.flatten(2).transpose(1, 2)
    torch.testing.assert_close(reference.center_tokens(x), t - t.mean(1, keepdim=True))


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_gradient(backend):
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    with kernels.use_backend(backend):
        torch.autograd.gradcheck(kernels.center_tokens, (x,))


def test_opcheck():
    from kernels.center import CENTER_TOKENS

    torch.library.opcheck(CENTER_TOKENS.custom_op, (torch.randn(2, 6, 3, 4, requires_grad=True),))
