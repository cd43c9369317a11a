"""Triton partition layout and row permutation against the reference."""

from __future__ import annotations

import pytest
import torch

from kernels import reference
from kernels.partition import kernel as permute
from tests.helpers import DTYPES, POISON_INT, poisoned


@pytest.mark.parametrize(
    "B,N,kappa", [(1, 49, 4), (3, 37, 5), (2, 196, 4), (1, 784, 6), (4, 5, 5), (2, 16, 1)]
)
def test_partition_matches_reference(device, B, N, kappa):
    labels = torch.randint(0, kappa, (B, N), dtype=torch.int32)
    if kappa > 2:
        labels[0][labels[0] == kappa - 1] = 0  # an empty cluster
    expected = reference.partition(labels, kappa)
    outs = tuple(poisoned(e.shape, torch.int32, device) for e in expected)
    config = permute.PARTITION.interpret_space[0] if device.type == "cpu" else None
    got = permute.launch_partition(labels.to(device), kappa, out=outs, config=config)
    for name, g, e in zip(("perm", "inverse", "offsets", "segment"), got, expected, strict=True):
        assert not (g == POISON_INT).any(), f"{name}: unwritten outputs"
        assert torch.equal(g.cpu(), e), name


def test_partition_of_a_strided_label_view(device):
    labels = torch.randint(0, 3, (4, 40), dtype=torch.int32)[:, ::2]  # column stride 2
    got = permute.launch_partition(labels.to(device), 3)
    for g, e in zip(got, reference.partition(labels, 3), strict=True):
        assert torch.equal(g.cpu(), e)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,C", [(1, 1), (49, 24), (130, 67), (300, 200)])
def test_permute_rows_matches_reference(device, M, C, dtype):
    x = torch.randn(M, C).to(dtype).to(device)
    index = torch.randperm(M, dtype=torch.int32).to(device)
    out = poisoned((M, C), dtype, device)
    permute.launch_permute_rows(x, index, out=out)
    assert torch.equal(out.cpu(), reference.permute_rows(x.cpu(), index.cpu()))


def test_permute_rows_reads_any_strides(device):
    base = torch.randn(50, 2, 33).to(device)
    x = base[:, 1, :]  # row stride 66
    xt = torch.randn(33, 50).to(device).t()  # column stride 50
    index = torch.randperm(50, dtype=torch.int32).to(device)
    for view in (x, xt):
        assert torch.equal(permute.launch_permute_rows(view, index), view[index.long()])


@pytest.mark.parametrize("config", permute.PERMUTE_ROWS.interpret_space)
def test_permute_rows_every_interpreter_config(device, config):
    x = torch.randn(77, 45).to(device)
    index = torch.randperm(77, dtype=torch.int32).to(device)
    assert torch.equal(permute.launch_permute_rows(x, index, config=config), x[index.long()])
