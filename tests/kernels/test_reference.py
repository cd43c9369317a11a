"""The pure-torch references against brute-force, loop-by-loop computations of their contracts."""

from __future__ import annotations

import pytest
import torch

from kernels import reference
from tests.helpers import integer_features, offsets_from_sizes, random_partition_sizes


# --------------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------------
def brute_force_kmeans(x: torch.Tensor, kappa: int, max_iters: int):
    """Lloyd on one image with Python loops (float64): the contract of reference.kmeans."""
    n, c = x.shape
    xs = [x[i].double() for i in range(n)]
    z = [xs[((2 * k + 1) * n) // (2 * kappa)].clone() for k in range(kappa)]

    def assign(z):
        out = []
        for i in range(n):
            d = [float(((xs[i] - z[k]) ** 2).sum()) for k in range(kappa)]
            out.append(min(range(kappa), key=lambda k: (d[k], k)))
        return out

    def means(labels, previous):
        new = []
        for k in range(kappa):
            members = [xs[i] for i in range(n) if labels[i] == k]
            new.append(torch.stack(members).mean(0) if members else previous[k].clone())
        return new

    labels = assign(z)
    iters, converged = 0, False
    while iters < max_iters:
        z = means(labels, z)
        new = assign(z)
        iters += 1
        if new == labels:
            converged = True
            break
        labels = new
    if not converged:
        z = means(labels, z)
    return torch.tensor(labels), torch.stack(z), iters


@pytest.mark.parametrize(
    "B,N,C,kappa", [(1, 49, 5, 4), (3, 37, 7, 3), (2, 64, 3, 6), (2, 10, 4, 10)]
)
def test_kmeans_matches_brute_force(B, N, C, kappa):
    x = torch.randn(B, N, C, dtype=torch.float64)
    labels, centroids, iters = reference.kmeans(x, kappa, max_iters=20)
    assert labels.dtype == torch.int32 and labels.shape == (B, N)
    assert centroids.shape == (B, kappa, C) and centroids.dtype == x.dtype
    for b in range(B):
        lab, z, it = brute_force_kmeans(x[b], kappa, 20)
        assert torch.equal(labels[b].long(), lab)
        torch.testing.assert_close(centroids[b], z)
        assert int(iters[b]) == it


def test_kmeans_iteration_cap_gives_means_of_returned_labels():
    x = torch.randn(2, 96, 6, dtype=torch.float64)
    labels, centroids, iters = reference.kmeans(x, 5, max_iters=1)
    assert iters.tolist() == [1, 1]
    for b in range(2):
        lab, z, _ = brute_force_kmeans(x[b], 5, 1)
        assert torch.equal(labels[b].long(), lab)
        torch.testing.assert_close(centroids[b], z)
        for k in range(5):
            members = x[b][labels[b] == k]
            if len(members):
                torch.testing.assert_close(centroids[b, k], members.mean(0))


def empty_cluster_case(C: int = 4, dtype=torch.float32) -> torch.Tensor:
    """N=12, kappa=3: initial centroids are nodes 2, 6, 10. Nodes 2 and 6 share the far point A,
    the rest is a cloud near the origin. Nodes 2 and 6 tie between clusters 0 and 1 (exactly:
    same features) and go to 0, so cluster 1 never gets a member and must keep its centroid A."""
    x = 0.1 * torch.randn(1, 12, C)
    x[0, 2] = x[0, 6] = torch.full((C,), 100.0)
    return x.to(dtype)


def test_kmeans_empty_cluster_keeps_its_centroid():
    x = empty_cluster_case()
    labels, centroids, iters = reference.kmeans(x, 3, max_iters=20)
    expected = torch.full((12,), 2, dtype=torch.int32)
    expected[[2, 6]] = 0
    assert torch.equal(labels[0], expected)
    assert torch.equal(centroids[0, 1], x[0, 6])  # empty: kept exactly
    torch.testing.assert_close(centroids[0, 2], x[0, expected == 2].mean(0))
    assert int(iters[0]) == 1
    lab, z, _ = brute_force_kmeans(x[0], 3, 20)
    assert torch.equal(labels[0].long(), lab)


def test_kmeans_float32_inputs_compute_in_float32_and_agree_with_float64():
    x = torch.randn(3, 64, 8)
    labels32, centroids32, _ = reference.kmeans(x, 4)
    labels64, centroids64, _ = reference.kmeans(x.double(), 4)
    assert centroids32.dtype == torch.float32 and centroids64.dtype == torch.float64
    assert torch.equal(labels32, labels64)
    torch.testing.assert_close(centroids32.double(), centroids64, atol=1e-5, rtol=1e-5)


def test_kmeans_images_are_independent_of_the_batch():
    x = torch.randn(4, 50, 6)
    labels, centroids, iters = reference.kmeans(x, 4)
    for b in range(4):
        lb, cb, ib = reference.kmeans(x[b : b + 1], 4)
        assert torch.equal(labels[b], lb[0]) and torch.equal(centroids[b], cb[0])
        assert iters[b] == ib[0]


@pytest.mark.parametrize("max_iters", [3, 20])
def test_kmeans_cpu_loop_compacts_converged_images(monkeypatch, max_iters):
    """Images that converge early leave the CPU loop's working batch; the rest go on (and some
    hit the cap after a compaction). Every image still gets its own brute-force result."""
    torch.manual_seed(1)
    blobs = torch.randn(1, 4, 5, dtype=torch.float64) * 50  # 4 far-apart centres
    easy = blobs[:, torch.arange(40) % 4] + 0.01 * torch.randn(4, 40, 5, dtype=torch.float64)
    hard = torch.randn(5, 40, 5, dtype=torch.float64)
    x = torch.cat([hard[:2], easy, hard[2:]])  # converged images between iterating ones
    batch_sizes = []
    from kernels.kmeans import reference as kmeans_reference

    assign = kmeans_reference._assign
    monkeypatch.setattr(
        kmeans_reference, "_assign", lambda x, z: batch_sizes.append(x.shape[0]) or assign(x, z)
    )
    labels, centroids, iters = reference.kmeans(x, 4, max_iters=max_iters)
    assert min(batch_sizes) < x.shape[0], "the working batch was never compacted"
    for b in range(x.shape[0]):
        lab, z, it = brute_force_kmeans(x[b], 4, max_iters)
        assert torch.equal(labels[b].long(), lab), b
        torch.testing.assert_close(centroids[b], z)
        assert int(iters[b]) == it, b


# --------------------------------------------------------------------------------------------
# partition + permutation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B,N,kappa", [(1, 49, 4), (3, 31, 5), (2, 200, 6), (2, 7, 7)])
def test_partition_matches_brute_force(B, N, kappa):
    labels = torch.randint(0, kappa, (B, N), dtype=torch.int32)
    labels[0, :] = labels[0, :].clamp(max=kappa - 2) if kappa > 1 else 0  # an empty cluster
    perm, inverse, offsets, segment = reference.partition(labels, kappa)
    expected_perm, expected_offsets = [], [0]
    for b in range(B):
        for k in range(kappa):
            members = [b * N + n for n in range(N) if int(labels[b, n]) == k]
            expected_perm += members
            expected_offsets.append(expected_offsets[-1] + len(members))
    # image order: node n of image b is in partition b * kappa + its label
    expected_segment = [b * kappa + int(labels[b, n]) for b in range(B) for n in range(N)]
    assert perm.tolist() == expected_perm
    assert offsets.tolist() == expected_offsets
    assert segment.tolist() == expected_segment
    assert all(t.dtype == torch.int32 for t in (perm, inverse, offsets, segment))
    assert torch.equal(perm[inverse.long()], torch.arange(B * N, dtype=torch.int32))


def test_permute_rows_roundtrip():
    labels = torch.randint(0, 4, (2, 30), dtype=torch.int32)
    perm, inverse, _, _ = reference.partition(labels, 4)
    x = torch.randn(60, 5)
    x_ua = reference.permute_rows(x, perm)
    for p in range(60):
        assert torch.equal(x_ua[p], x[int(perm[p])])
    assert torch.equal(reference.permute_rows(x_ua, inverse), x)


# --------------------------------------------------------------------------------------------
# partition k-NN
# --------------------------------------------------------------------------------------------
def brute_force_knn(x: torch.Tensor, offsets: torch.Tensor, k: int) -> list[list[int]]:
    out = []
    bounds = offsets.tolist()
    part_of = {}
    for q in range(len(bounds) - 1):
        for i in range(bounds[q], bounds[q + 1]):
            part_of[i] = (bounds[q], bounds[q + 1])
    for i in range(x.shape[0]):
        lo, hi = part_of[i]
        d = [(float(((x[i].double() - x[j].double()) ** 2).sum()), j) for j in range(lo, hi)]
        ranked = [j for _, j in sorted(d)]
        out.append([ranked[s % len(ranked)] for s in range(k)])
    return out


@pytest.mark.parametrize(
    "B,N,C,kappa,K",
    [(1, 49, 8, 4, 9), (2, 37, 5, 3, 9), (2, 60, 3, 6, 18), (1, 20, 4, 4, 32), (3, 11, 6, 5, 4)],
)
def test_partition_knn_matches_brute_force(B, N, C, kappa, K):
    sizes = random_partition_sizes(B, N, kappa)
    sizes[0, 0], sizes[0, -1] = 1, sizes[0, -1] + sizes[0, 0] - 1  # a single-node partition
    offsets = offsets_from_sizes(sizes)
    x = integer_features(B * N, C, torch.float32)  # exact distances: ties by lowest index
    nbr = reference.partition_knn(x, offsets, K)
    assert nbr.dtype == torch.int32 and nbr.shape == (B * N, K)
    assert nbr.tolist() == brute_force_knn(x, offsets, K)


def test_partition_knn_small_partition_repeats_members_cyclically():
    offsets = torch.tensor([0, 3, 10], dtype=torch.int32)
    x = torch.tensor([[0.0], [1.0], [3.0]] + [[float(10 + i * i)] for i in range(7)])
    nbr = reference.partition_knn(x, offsets, 7)
    assert nbr[0].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert nbr[2].tolist() == [2, 1, 0, 2, 1, 0, 2]
    assert all(3 <= j < 10 for j in nbr[3:].flatten().tolist())


# --------------------------------------------------------------------------------------------
# max aggregation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("relative", [True, False])
def test_max_aggregate_matches_brute_force(relative):
    M, C, K = 23, 7, 5
    x = torch.randn(M, C)
    nbr = torch.randint(0, M, (M, K), dtype=torch.int32)
    out, slot = reference.max_aggregate(x, nbr, relative)
    for v in range(M):
        for c in range(C):
            vals = [float(x[int(nbr[v, k]), c]) for k in range(K)]
            best = max(range(K), key=lambda k: (vals[k], -k))
            assert int(slot[v, c]) == best
            expected = vals[best] - (float(x[v, c]) if relative else 0.0)
            assert abs(float(out[v, c]) - expected) < 1e-6


def test_max_aggregate_ties_pick_the_first_slot():
    x = torch.randn(4, 3)
    nbr = torch.tensor([[1, 1, 2], [3, 0, 3], [2, 2, 2], [0, 1, 0]], dtype=torch.int32)
    _, slot = reference.max_aggregate(x, nbr, True)
    for v in range(4):
        for c in range(3):
            rows = nbr[v].tolist()
            vals = [float(x[r, c]) for r in rows]
            assert int(slot[v, c]) == vals.index(max(vals))


@pytest.mark.parametrize("relative", [True, False])
def test_max_aggregate_backward_matches_autograd(relative):
    M, C, K = 19, 6, 4
    x = torch.randn(M, C, dtype=torch.float64, requires_grad=True)
    nbr = torch.randint(0, M, (M, K), dtype=torch.int32)
    gathered = x[nbr.long()]
    expected_out = gathered.max(dim=1).values - (x if relative else 0)
    grad = torch.randn(M, C, dtype=torch.float64)
    (expected,) = torch.autograd.grad(expected_out, x, grad)
    _, slot = reference.max_aggregate(x.detach(), nbr, relative)
    got = reference.max_aggregate_backward(grad, nbr, slot, relative)
    torch.testing.assert_close(got, expected)


def test_references_run_on_any_device_without_reading_values_back():
    """On the meta device every value read-back (``.item()``, ``bool()``, boolean-mask indexing,
    ``nonzero``) fails: references that run there never sync with a GPU and have no
    data-dependent shapes, so ``CLUSTERVIG_BACKEND=torch`` runs them on any device."""
    meta = torch.device("meta")
    x = torch.empty(2, 30, 8, device=meta)
    labels, centroids, iterations = reference.kmeans(x, 3, 20)
    perm, inverse, offsets, segment = reference.partition(labels, 3)
    rows = reference.permute_rows(x.reshape(60, 8), perm)
    nbr = reference.partition_knn(rows, offsets, 5, 30)
    out, slot = reference.max_aggregate(rows, nbr, True, True)
    grad = reference.max_aggregate_backward(out, nbr, slot, True)
    assert labels.shape == (2, 30) and centroids.shape == (2, 3, 8) and iterations.shape == (2,)
    assert perm.shape == inverse.shape == segment.shape == (60,) and offsets.shape == (7,)
    assert nbr.shape == (60, 5) and out.shape == slot.shape == grad.shape == (60, 8)
    assert all(t.device == meta for t in (labels, perm, nbr, out, grad))


@pytest.mark.parametrize("nonfinite", [False, True])
def test_knn_cpu_strategies_agree(nonfinite):
    """The CPU reference picks one masked matrix, one padding or size groups by cost: all three
    give the same neighbours, NaN rows included (never a row of another partition)."""
    from kernels.knn.reference import _knn_dense, _knn_padded, _size_groups

    torch.manual_seed(1)
    sizes = torch.tensor([1, 7, 0, 30, 3, 12, 60, 2])
    M = int(sizes.sum())
    offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64)
    offsets[1:] = sizes.cumsum(0)
    x = torch.randint(-3, 4, (M, 6)).float()
    if nonfinite:
        x[5, 0] = float("nan")
        x[40, 1] = float("inf")
    k = 9
    results = []
    for run in ("dense", "single", "groups"):
        out = torch.full((M + 1, k), -7, dtype=torch.int32)
        if run == "dense":
            _knn_dense(x, offsets, k, out)
        elif run == "single":
            _knn_padded(x, offsets[:-1], sizes, int(sizes.max()), k, out, M)
        else:
            groups, _ = _size_groups(sizes)
            assert len(groups) > 1
            for index, S in groups:
                _knn_padded(x, offsets[:-1][index], sizes[index], S, k, out, M)
        results.append(out[:M])
    assert torch.equal(results[0], results[1]) and torch.equal(results[1], results[2])
    part = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    assert torch.equal(part[results[0].long()], part.unsqueeze(1).expand(-1, k))


@pytest.mark.parametrize(
    "sizes,expected_groups",
    [
        ([90, 88, 5, 4, 3, 0, 2, 60, 1], 2),
        ([90, 88, 60, 50, 40, 5, 4, 3, 2, 1] * 3, 3),
        ([50] * 12, 1),
        ([0, 7, 0], 1),
        ([0, 0], 0),
    ],
)
def test_knn_size_groups_cover_every_partition_once(sizes, expected_groups):
    """The CPU k-NN's size groups: every non-empty partition in exactly one group, padded to
    its group's largest; ragged sizes are split, equal sizes are not."""
    from kernels.knn.reference import _size_groups

    sizes = torch.tensor(sizes)
    groups, cost = _size_groups(sizes)
    members = sorted(int(i) for index, _ in groups for i in index)
    assert members == [i for i, size in enumerate(sizes.tolist()) if size > 0]
    assert all(S == int(sizes[index].max()) for index, S in groups)
    assert len(groups) == expected_groups
    padded = sum(len(index) * S * S for index, S in groups)
    assert cost >= padded
