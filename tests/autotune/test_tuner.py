"""The tuner's correctness filter: a config whose answer equals the default's up to near-ties is
kept, a wrong one is rejected (k-means by its objective, k-NN by its neighbours' distances)."""

from __future__ import annotations

import torch

from autotune.space import Launch
from autotune.tuner import tune
from kernels.kmeans import launch as kmeans
from kernels.knn import kernel as knn
from kernels.tuning import TuneCase

CPU = torch.device("cpu")


def _near_tie_images() -> torch.Tensor:
    """(1, 31, 4) float32: three tight clusters and one node almost exactly midway between the
    first two, so which of them it joins is a rounding decision."""
    gen = torch.Generator().manual_seed(0)
    first = torch.tensor([-4.0, 0, 0, 0]) + 0.01 * torch.randn(10, 4, generator=gen)
    second = first * torch.tensor([-1.0, 1, 1, 1])  # its mirror image: the tie is exact
    third = torch.tensor([0, 9.0, 0, 0]) + 0.01 * torch.randn(10, 4, generator=gen)
    middle = torch.tensor([[1e-7, -3.0, 0, 0]])  # 1e-7 nearer the second cluster
    return torch.cat([first, second, third, middle]).unsqueeze(0)


def _labels() -> torch.Tensor:
    """The ten nodes of each cluster, and the middle node in the second."""
    labels = torch.arange(31).div(10, rounding_mode="floor")
    labels[30] = 1
    return labels.unsqueeze(0)


def _clustering(x: torch.Tensor, labels: torch.Tensor) -> tuple:
    kappa = 3
    onehot = torch.nn.functional.one_hot(labels.long(), kappa).double()  # (B, N, kappa)
    centroids = (onehot.transpose(1, 2) @ x.double()) / onehot.sum(1).unsqueeze(-1)
    return labels.int(), centroids.float(), torch.ones(x.shape[0], dtype=torch.int32)


def test_kmeans_accepts_the_other_side_of_a_near_tie_and_rejects_a_wrong_clustering():
    x = _near_tie_images()
    labels = _labels()
    expected = _clustering(x, labels)
    other_side = labels.clone()
    other_side[0, 30] = 0
    assert not torch.equal(other_side, labels)
    assert kmeans.same_clustering(x, _clustering(x, other_side), expected)
    wrong = labels.clone()
    wrong[0, :5] = 2  # five nodes of the first cluster in the third
    assert not kmeans.same_clustering(x, _clustering(x, wrong), expected)
    out_of_range = labels.clone()
    out_of_range[0, 0] = 3
    assert not kmeans.same_clustering(x, (out_of_range.int(), *expected[1:]), expected)


def test_knn_accepts_equally_near_neighbours_and_rejects_a_farther_one():
    # One partition of four rows: row 0 has two equally near candidates (rows 1 and 2).
    x = torch.tensor([[0.0, 1.0], [1.0, 1.0], [-1.0, 1.0], [0.0, -1.0]])
    perm = torch.arange(4, dtype=torch.int32)
    offsets = torch.tensor([0, 4], dtype=torch.int32)
    expected = torch.tensor([[0, 1], [1, 0], [2, 0], [3, 1]], dtype=torch.int32)
    tie = expected.clone()
    tie[0, 1] = 2  # the other equally near candidate
    assert knn.same_neighbours(x, perm, offsets, tie, expected)
    farther = expected.clone()
    farther[0, 1] = 3
    assert not knn.same_neighbours(x, perm, offsets, farther, expected)
    # a neighbour from another partition is wrong whatever its distance
    two_parts = torch.tensor([0, 2, 4], dtype=torch.int32)
    assert not knn.same_neighbours(x, perm, two_parts, tie, tie)


def test_the_tuner_keeps_a_config_at_a_near_tie_and_rejects_a_broken_one(monkeypatch):
    """Through :func:`autotune.tuner.tune`, with the recipe's inputs and a launcher whose second
    config answers the other side of the near-tie and whose third is wrong."""
    x = _near_tie_images()
    labels = _labels()
    other_side = labels.clone()
    other_side[0, 30] = 0
    wrong = labels.clone()
    wrong[0, :5] = 2
    answers = {"a": labels, "b": other_side, "c": wrong}
    configs = [{"name": n, "num_warps": 4, "num_stages": 1} for n in answers]

    class Recipe:
        name = "kmeans"
        default = {"e4": configs[0]}

        @staticmethod
        def tune_call(shape, dtype, device):
            return TuneCase(
                lambda config: _clustering(x, answers[config["name"]]),
                lambda output, expected: kmeans.same_clustering(x, output, expected),
            )

    launch = Launch("kmeans", torch.float32, {"B": 1, "N": 31, "C": 4, "kappa": 3}, "e4/x")
    outcome = tune(launch, Recipe, configs, CPU, warmup=0, repeats=1)
    assert [c["name"] for c, _ in outcome.rejected] == ["c"]
    assert "differs" in outcome.rejected[0][1]


def test_the_time_cap_stops_inside_a_bucket_and_nothing_is_claimed_tuned():
    """``--max-minutes`` is checked between the configs of a bucket, not only between buckets:
    a search cut short returns no outcome (the CLI then saves nothing for that bucket)."""
    import time

    calls = []

    class Recipe:
        name = "partition"
        default = {"e4": {"name": "a"}}

        @staticmethod
        def tune_call(shape, dtype, device):
            return TuneCase(lambda config: calls.append(config["name"]) or 1, lambda o, e: True)

    launch = Launch("partition", torch.float32, {"B": 1, "N": 8, "kappa": 2}, "e4/x")
    configs = [{"name": n} for n in "abc"]
    assert tune(launch, Recipe, configs, CPU, 0, 1, deadline=time.monotonic() - 1) is None
    assert calls == ["a"]  # the default's reference answer, then no config
    assert tune(launch, Recipe, configs, CPU, 0, 1, deadline=time.monotonic() + 60) is not None
