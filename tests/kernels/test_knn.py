"""Triton in-partition k-NN against the reference (interpreter on CPU, the real thing on a GPU)."""

from __future__ import annotations

import pytest
import torch

from kernels import reference
from kernels.knn import kernel as knn
from tests.helpers import (
    DTYPES,
    POISON_INT,
    integer_features,
    neighbour_distances,
    offsets_from_sizes,
    poisoned,
    random_partition_sizes,
)

# (B, N, C, kappa, K): batch 1, N in {49, 196, 784}, C not a power of two, K from 1 to 32.
SHAPES = [
    (1, 49, 24, 4, 9),
    (2, 49, 20, 4, 18),
    (3, 30, 17, 6, 9),
    (1, 196, 40, 4, 18),
    (2, 20, 8, 4, 32),
    (2, 13, 5, 3, 1),
    pytest.param(1, 784, 24, 6, 12, marks=pytest.mark.slow),
]


def _sizes(B, N, kappa, *, single=True, empty=True):
    sizes = random_partition_sizes(B, N, kappa, min_size=1)
    if single and kappa > 1:  # a single-node partition
        sizes[0, 1], sizes[0, 0] = 1, sizes[0, 0] + sizes[0, 1] - 1
    if empty and kappa > 2:  # an empty partition
        sizes[-1, 2], sizes[-1, 0] = 0, sizes[-1, 0] + sizes[-1, 2]
    return sizes


def _configs():
    return knn.PARTITION_KNN.interpret_space


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,C,kappa,K", SHAPES)
def test_integer_features_match_reference_exactly(device, B, N, C, kappa, K, dtype):
    sizes = _sizes(B, N, kappa)
    offsets = offsets_from_sizes(sizes).to(device)
    x = integer_features(B * N, C, dtype).to(device)
    expected = reference.partition_knn(x.cpu(), offsets.cpu(), K)
    if N > 200 and dtype != torch.float32 and device.type == "cpu":
        pytest.skip("N=784 runs in float32 only under the interpreter (minutes per dtype)")
    out = poisoned((B * N, K), torch.int32, device)
    config = _configs()[-1] if device.type == "cpu" else None
    knn.launch_partition_knn(x, offsets, K, N, out=out, config=config)
    assert not (out == POISON_INT).any(), "unwritten outputs"
    assert torch.equal(out.cpu(), expected)


@pytest.mark.parametrize(
    "config", _configs(), ids=lambda c: f"M{c['BLOCK_M']}N{c['BLOCK_N']}C{c['BLOCK_C']}"
)
def test_every_interpreter_config(device, config):
    B, N, C, kappa, K = 2, 75, 33, 3, 10
    offsets = offsets_from_sizes(_sizes(B, N, kappa)).to(device)
    x = integer_features(B * N, C, torch.float32).to(device)
    out = poisoned((B * N, K), torch.int32, device)
    knn.launch_partition_knn(x, offsets, K, N, out=out, config=config)
    assert torch.equal(out.cpu(), reference.partition_knn(x.cpu(), offsets.cpu(), K))


# Distances between unit vectors: relative error of the kernel's distance per dtype.
DIST_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "B,N,C,kappa,K", [(2, 49, 24, 4, 9), (1, 196, 40, 4, 18), (3, 30, 17, 6, 9)]
)
def test_unit_features_give_the_nearest_neighbours(device, B, N, C, kappa, K, dtype):
    """Model-like inputs (L2-normalised random rows): the chosen neighbours lie in the node's own
    partition and their distances are the K smallest, up to the dtype's rounding. (Indices are
    not compared: rounded distances can reorder near-equal neighbours.)"""
    sizes = _sizes(B, N, kappa, empty=False)
    offsets = offsets_from_sizes(sizes)
    x = torch.nn.functional.normalize(torch.randn(B * N, C), dim=-1).to(dtype)
    out = knn.launch_partition_knn(x.to(device), offsets.to(device), K, N).cpu()
    expected = reference.partition_knn(x, offsets, K)
    part = torch.repeat_interleave(torch.arange(len(sizes.reshape(-1))), sizes.reshape(-1))
    assert torch.equal(part[out.long()], part.unsqueeze(1).expand(-1, K))
    got_d = neighbour_distances(x, out).sort(dim=1).values
    exp_d = neighbour_distances(x, expected).sort(dim=1).values
    torch.testing.assert_close(got_d, exp_d, atol=4 * DIST_TOL[dtype], rtol=0)
    assert (out[:, 0] == torch.arange(B * N)).float().mean() > 0.95  # a node is its own nearest


def test_small_partition_repeats_members(device):
    offsets = torch.tensor([0, 2, 3, 10], dtype=torch.int32, device=device)
    x = torch.tensor([[0.0], [1.0], [5.0]] + [[float(20 + i * i)] for i in range(7)], device=device)
    out = knn.launch_partition_knn(
        x, offsets, 5, 8, config=_configs()[0] if device.type == "cpu" else None
    )
    assert out[0].tolist() == [0, 1, 0, 1, 0]
    assert out[1].tolist() == [1, 0, 1, 0, 1]
    assert out[2].tolist() == [2, 2, 2, 2, 2]
    assert torch.equal(out.cpu(), reference.partition_knn(x.cpu(), offsets.cpu(), 5))


def test_no_program_idles_and_every_block_is_visited():
    """``ceil(M / BLOCK_M)`` programs striding over the row blocks: never more programs than
    blocks (any sizes, empty partitions included), so none idles; and a launch whose programs
    each take several blocks gives the same lists (the block loop is exercised)."""
    torch.manual_seed(0)
    for block_m in (16, 32, 64):
        for _ in range(200):
            P = int(torch.randint(1, 40, ()))
            sizes = torch.randint(0, 300, (P,))
            blocks = int(((sizes + block_m - 1) // block_m).sum())
            assert -(-int(sizes.sum()) // block_m) <= blocks


def test_programs_that_take_several_blocks_give_the_same_lists(device):
    B, N, C, kappa, K = 2, 60, 12, 6, 5
    offsets = offsets_from_sizes(_sizes(B, N, kappa)).to(device)
    x = integer_features(B * N, C, torch.float32).to(device)
    config = dict(_configs()[0])  # 16-row blocks: ragged sizes give more blocks than programs
    out = knn.launch_partition_knn(x, offsets, K, N, config=config)
    assert torch.equal(out.cpu(), reference.partition_knn(x.cpu(), offsets.cpu(), K))


# --------------------------------------------------------------------------------------------
# The model's mode: image-order rows gathered through the partition order, optionally normalised
# --------------------------------------------------------------------------------------------
def image_order_partition(B, N, kappa, *, generator=None):
    """Random labels with ragged clusters (a single-node and an empty one where kappa allows)
    and :func:`kernels.reference.partition`'s ``(perm, offsets)`` of them."""
    labels = torch.randint(0, kappa, (B, N), generator=generator)
    if kappa > 2:
        labels[-1][labels[-1] == 2] = 0  # an empty cluster
    if kappa > 1:
        labels[0][labels[0] == 1] = 0
        labels[0, N // 2] = 1  # a single-node cluster
    perm, _, offsets, _ = reference.partition(labels.int(), kappa)
    return perm, offsets


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "B,N,C,kappa,K", [(1, 49, 24, 4, 9), (2, 30, 17, 3, 18), (2, 20, 8, 4, 32)]
)
def test_gathered_rows_give_image_order_lists(device, B, N, C, kappa, K, dtype):
    """With ``perm`` the lists are written to the nodes' own rows and name image-order rows:
    the partition-ordered result translated, exactly (integer features: unique answer)."""
    perm, offsets = image_order_partition(B, N, kappa)
    x = integer_features(B * N, C, dtype)
    ordered = reference.partition_knn(x[perm.long()], offsets, K)
    expected = torch.empty_like(ordered)
    expected[perm.long()] = perm[ordered.long()]
    assert torch.equal(reference.partition_knn(x, offsets, K, perm=perm), expected)
    out = poisoned((B * N, K), torch.int32, device)
    config = _configs()[-1] if device.type == "cpu" else None
    knn.launch_partition_knn(
        x.to(device), offsets.to(device), K, N, perm=perm.to(device), out=out, config=config
    )
    assert not (out == POISON_INT).any(), "unwritten outputs"
    assert torch.equal(out.cpu(), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,C,kappa,K", [(2, 49, 24, 4, 9), (1, 100, 40, 2, 18)])
def test_normalised_distances_rank_directions(device, B, N, C, kappa, K, dtype):
    """``normalize``: rows of very different lengths (one zero row) ranked by the distance of
    their unit vectors: the lists lie in the node's partition, their distances are the K
    smallest up to the dtype's rounding, and a node is its own nearest. The 100-node partitions
    exceed a column tile: the running top-K path."""
    perm, offsets = image_order_partition(B, N, kappa)
    x = torch.randn(B * N, C) * torch.rand(B * N, 1).mul(50).add(0.01)
    x[3] = 0.0
    x = x.to(dtype)
    out = poisoned((B * N, K), torch.int32, device)
    config = _configs()[0] if device.type == "cpu" else None
    knn.launch_partition_knn(
        x.to(device), offsets.to(device), K, N, perm=perm.to(device), normalize=True, out=out,
        config=config,
    )  # fmt: skip
    out = out.cpu()
    expected = reference.partition_knn(x, offsets, K, perm=perm, normalize=True)
    label = torch.empty(B * N, dtype=torch.int64)
    sizes = (offsets[1:] - offsets[:-1]).long()
    label[perm.long()] = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
    assert torch.equal(label[out.long()], label.unsqueeze(1).expand(-1, K))
    unit = torch.nn.functional.normalize(x.double(), dim=-1)
    got_d = neighbour_distances(unit, out).sort(dim=1).values
    exp_d = neighbour_distances(unit, expected).sort(dim=1).values
    torch.testing.assert_close(got_d, exp_d, atol=4 * DIST_TOL[dtype], rtol=0)
    own = out[:, 0] == torch.arange(B * N)
    assert own[torch.arange(B * N) != 3].float().mean() > 0.95


def test_a_partition_wider_than_a_tile_but_smaller_than_k_repeats_members(device):
    """16-column tiles, K = 20 and partitions of 18 and 5 nodes: the running top-K path with
    repeated members (slot s holds the member of rank s % size), exactly as the reference."""
    offsets = torch.tensor([0, 18, 23], dtype=torch.int32, device=device)
    x = integer_features(23, 6, torch.float32).to(device)
    config = _configs()[0] if device.type == "cpu" else None
    assert config is None or config["BLOCK_N"] == 16
    out = poisoned((23, 20), torch.int32, device)
    knn.launch_partition_knn(x, offsets, 20, 18, out=out, config=config)
    expected = reference.partition_knn(x.cpu(), offsets.cpu(), 20)
    assert torch.equal(out.cpu(), expected)
    assert torch.equal(out[0, 18:].cpu(), out[0, :2].cpu())
