"""The compiled CPU kernels (``kernels/native.py``, each op's ``*.c``) against the references
(k-means, partition order, k-NN, max aggregation), and their build: cache, corrupt or foreign
files, no compiler."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

import kernels
from kernels import native, reference
from kernels.aggregate.native import native_max_aggregate
from kernels.kmeans.native import native_kmeans
from kernels.knn.native import native_partition_knn
from kernels.partition.native import native_partition
from tests import helpers
from tests.helpers import DTYPES, POISON_INT, integer_features, neighbour_distances, poisoned
from tests.kernels.test_kmeans import blobs, expect_reference_kmeans
from tests.kernels.test_knn import image_order_partition
from tests.kernels.test_reference import empty_cluster_case

pytestmark = pytest.mark.skipif(
    not native.available(), reason=f"no compiled CPU kernels: {native.build_error()}"
)


def _kmeans(x, kappa, iters):
    B, N, _ = x.shape
    labels = poisoned((B, N), torch.int32, "cpu")
    iterations = poisoned((B,), torch.int32, "cpu")
    out = native_kmeans(x, kappa, iters, out=(labels, iterations))
    assert out[0] is labels and out[2] is iterations
    assert not (labels == POISON_INT).any() and not (iterations == POISON_INT).any()
    return out


# --------------------------------------------------------------------------------------------
# k-means
# --------------------------------------------------------------------------------------------
# kappa 1..16 crosses the kernel's blocks of four centroids; N and C not powers of two.
@pytest.mark.parametrize(
    "B,N,C,kappa",
    [(1, 49, 24, 4), (3, 37, 17, 6), (2, 196, 40, 4), (1, 20, 8, 1), (2, 40, 8, 16), (4, 33, 5, 7)],
)
def test_kmeans_random_features_match_the_float64_reference(B, N, C, kappa):
    x = torch.randn(B, N, C)
    expect_reference_kmeans(_kmeans(x, kappa, 20), x, kappa)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,C,kappa", [(2, 49, 24, 4), (1, 196, 40, 6), (3, 30, 17, 3)])
def test_kmeans_separated_clusters_every_dtype(B, N, C, kappa, dtype):
    x = blobs(B, N, C, kappa, dtype)
    expect_reference_kmeans(_kmeans(x, kappa, 20), x, kappa)


def test_kmeans_iteration_cap_and_early_stop():
    x = torch.randn(3, 80, 10)
    for cap in (1, 2, 50):
        out = _kmeans(x, 5, cap)
        expect_reference_kmeans(out, x, 5, cap)
        assert int(out[2].max()) <= cap


def test_kmeans_empty_cluster_keeps_its_centroid():
    x = empty_cluster_case()
    labels, centroids, _ = _kmeans(x, 3, 20)
    assert torch.equal(labels, reference.kmeans(x.double(), 3, 20)[0])
    assert torch.equal(centroids[0, 1], x[0, 6])


def test_kmeans_each_image_as_alone_and_strided_input():
    x = torch.randn(3, 60, 2, 12)[:, :, 1, :]  # node stride 24
    x[1] *= 1e-3  # an image that converges at once beside ones that do not
    labels, centroids, iterations = _kmeans(x, 4, 20)
    for b in range(3):
        alone = _kmeans(x[b : b + 1].contiguous(), 4, 20)
        assert torch.equal(alone[0][0], labels[b]) and torch.equal(alone[2][0], iterations[b])
        assert torch.equal(alone[1][0], centroids[b])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_kmeans_non_finite_nodes_keep_labels_valid(value):
    x = torch.randn(3, 40, 6)
    x[1, 3, 0] = value
    x[2] = value
    labels, centroids, _ = _kmeans(x, 4, 20)
    assert labels.min() >= 0 and labels.max() < 4
    clean = _kmeans(x[:1].clone(), 4, 20)
    assert torch.equal(labels[0], clean[0][0]) and torch.equal(centroids[0], clean[1][0])
    assert not torch.isfinite(centroids[1]).all()
    if value != value:  # NaN everywhere: no finite distance, every node goes to cluster 0
        assert (labels[2] == 0).all()


# --------------------------------------------------------------------------------------------
# k-NN
# --------------------------------------------------------------------------------------------
def _sizes(B, N, kappa):
    """Ragged partitions, with a single-node and an empty one where kappa allows."""
    sizes = helpers.random_partition_sizes(B, N, kappa, min_size=1)
    if kappa > 1:
        sizes[0, 1], sizes[0, 0] = 1, sizes[0, 0] + sizes[0, 1] - 1
    if kappa > 2:
        sizes[-1, 2], sizes[-1, 0] = 0, sizes[-1, 0] + sizes[-1, 2]
    return sizes


def _knn(x, offsets, K):
    out = poisoned((x.shape[0], K), torch.int32, "cpu")
    assert native_partition_knn(x, offsets, K, out=out) is out
    assert not (out == POISON_INT).any(), "unwritten outputs"
    return out


# K from 1 to 32 (beyond some partitions' sizes), N and C not powers of two, partitions
# crossing the kernel's 16-column and 4-row blocks.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "B,N,C,kappa,K",
    [(1, 49, 24, 4, 9), (2, 49, 20, 4, 18), (3, 30, 17, 6, 9), (2, 20, 8, 4, 32), (2, 13, 5, 3, 1)],
)
def test_knn_integer_features_match_the_reference_exactly(B, N, C, kappa, K, dtype):
    """Integer features: exact distances in every dtype, so exact ties test the index rule."""
    offsets = helpers.offsets_from_sizes(_sizes(B, N, kappa))
    x = integer_features(B * N, C, dtype)
    assert torch.equal(_knn(x, offsets, K), reference.partition_knn(x.double(), offsets, K))


@pytest.mark.parametrize("B,N,C,kappa,K", [(2, 49, 24, 4, 9), (1, 196, 40, 4, 18)])
def test_knn_unit_features_give_the_nearest_neighbours(B, N, C, kappa, K):
    """Model-like inputs: the same neighbours as the float32 reference, and distances that are
    the K smallest up to float32 rounding of the float64 oracle's."""
    offsets = helpers.offsets_from_sizes(_sizes(B, N, kappa))
    x = torch.nn.functional.normalize(torch.randn(B * N, C), dim=-1)
    out = _knn(x, offsets, K)
    assert torch.equal(out, reference.partition_knn(x, offsets, K))
    expected = reference.partition_knn(x.double(), offsets, K)
    got_d = neighbour_distances(x, out).sort(dim=1).values
    torch.testing.assert_close(got_d, neighbour_distances(x, expected).sort(dim=1).values)


def test_knn_small_partitions_repeat_their_members():
    offsets = torch.tensor([0, 2, 3, 3, 10], dtype=torch.int32)
    x = torch.tensor([[0.0], [1.0], [5.0]] + [[float(20 + i * i)] for i in range(7)])
    out = _knn(x, offsets, 5)
    assert out[0].tolist() == [0, 1, 0, 1, 0]
    assert out[1].tolist() == [1, 0, 1, 0, 1]
    assert out[2].tolist() == [2, 2, 2, 2, 2]
    assert torch.equal(out, reference.partition_knn(x.double(), offsets, 5))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_knn_non_finite_rows_rank_as_the_reference_ranks_them(value):
    """A NaN distance ranks as +inf and a negative one as 0, tied by index: the float32
    reference's rule, so the lists are equal, and every index stays in its partition."""
    sizes = torch.tensor([[13, 20, 7]])
    offsets = helpers.offsets_from_sizes(sizes)
    x = integer_features(40, 6, torch.float32)
    x[3, 1] = value  # one row
    x[13:33] = value  # a whole partition
    out = _knn(x, offsets, 9)
    assert torch.equal(out, reference.partition_knn(x, offsets, 9))
    part = torch.repeat_interleave(torch.arange(3), sizes.reshape(-1))
    assert torch.equal(part[out.long()], part.unsqueeze(1).expand(-1, 9))


# --------------------------------------------------------------------------------------------
# partition order
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B,N,kappa", [(1, 49, 4), (3, 37, 6), (8, 196, 4), (2, 10, 16), (1, 5, 1)])
def test_partition_matches_the_reference(B, N, kappa):
    """Random labels (empty clusters included where kappa is large): the same stable order."""
    labels = torch.randint(0, kappa, (B, N), dtype=torch.int32)
    for got, expected in zip(
        native_partition(labels, kappa), reference.partition(labels, kappa), strict=True
    ):
        assert got.dtype == torch.int32 and torch.equal(got, expected)


def test_partition_clamps_labels_out_of_range():
    """The op rejects them; the kernel itself still never writes outside its outputs."""
    labels = torch.tensor([[0, 7, -3, 1, 2, 2]], dtype=torch.int32)
    for got, expected in zip(
        native_partition(labels, 3), reference.partition(labels, 3), strict=True
    ):
        assert torch.equal(got, expected)


# --------------------------------------------------------------------------------------------
# max aggregation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("relative", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,C,K", [(1, 5, 1), (37, 17, 9), (200, 40, 18), (64, 3, 32)])
def test_max_aggregate_matches_the_reference(M, C, K, dtype, relative):
    """Distinct values per channel (a permutation), so every maximum and its slot are unique."""
    x = torch.stack([torch.randperm(M).to(dtype) for _ in range(C)], dim=1)
    nbr = torch.randint(0, M, (M, K), dtype=torch.int32)
    nbr[:, -1] = nbr[:, 0]  # a repeated neighbour: the first of two equal slots wins
    out, slot = native_max_aggregate(x, nbr, relative, True)
    expected, e_slot = reference.max_aggregate(x.double(), nbr, relative, True)
    assert out.dtype == dtype and torch.equal(slot, e_slot)
    torch.testing.assert_close(out.double(), expected, atol=0, rtol=0)
    plain, empty = native_max_aggregate(x, nbr, relative, False)
    assert torch.equal(plain, out) and empty.numel() == 0


def test_max_aggregate_nan_wins_from_its_first_slot_and_indices_are_clamped():
    x = torch.randn(10, 4)
    x[3, 1] = x[5, 1] = float("nan")
    x[6, 2] = float("inf")
    nbr = torch.tensor([[0, 3, 5, 6]] * 9 + [[-4, 12, 3, 6]], dtype=torch.int32)
    out, slot = native_max_aggregate(x, nbr, False, True)
    expected, e_slot = reference.max_aggregate(x, nbr, False, True)
    assert torch.equal(slot, e_slot) and slot[0, 1] == 1 and slot[0, 2] == 3
    torch.testing.assert_close(out, expected, equal_nan=True)
    assert torch.isnan(out[:, 1]).all()


@pytest.mark.parametrize("normalize", [False, True])
def test_knn_gathered_and_normalised_matches_reference(normalize):
    perm, offsets = image_order_partition(3, 50, 4)
    x = torch.randn(150, 20) * torch.rand(150, 1).mul(20)
    x[7] = 0.0
    out = poisoned((150, 11), torch.int32, "cpu")
    native_partition_knn(x, offsets, 11, out=out, perm=perm, normalize=normalize)
    assert not (out == POISON_INT).any(), "unwritten outputs"
    expected = reference.partition_knn(x, offsets, 11, perm=perm, normalize=normalize)
    if not normalize:
        assert torch.equal(out, expected)
    unit = torch.nn.functional.normalize(x.double(), dim=-1) if normalize else x.double()
    got = neighbour_distances(unit, out)
    torch.testing.assert_close(got, neighbour_distances(unit, expected), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# threads and dispatch
# --------------------------------------------------------------------------------------------
def test_work_split_over_threads_gives_the_same_result(monkeypatch):
    x = torch.randn(5, 60, 12)
    offsets = helpers.offsets_from_sizes(_sizes(5, 60, 4))
    rows = x.reshape(300, 12)
    nbr = torch.randint(0, 300, (300, 9), dtype=torch.int32)

    def run():
        return (
            *native_kmeans(x, 4, 20),
            native_partition_knn(rows, offsets, 9),
            *native_max_aggregate(rows, nbr, True, True),
        )

    one = run()
    monkeypatch.setattr(native, "PARALLEL_WORK", 1)  # split even this little work
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        split = run()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, split, strict=True))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_threads(monkeypatch):
    """The thread pool of the parent does not exist in a forked child: the child builds its own
    instead of waiting forever on threads that are gone."""
    monkeypatch.setattr(native, "PARALLEL_WORK", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(4, 30, 6)
        expected = native_kmeans(x, 3, 20)[0]  # starts the parent's pool
        assert native._pool is not None
        with multiprocessing.get_context("fork").Pool(1) as pool:
            labels = pool.apply_async(_labels_in_child, (x,)).get(timeout=60)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(labels, expected)


def _labels_in_child(x):
    torch.set_num_threads(2)
    return native_kmeans(x, 3, 20)[0]


def test_the_auto_and_native_backends_run_the_compiled_kernels(monkeypatch):
    """Every compiled kernel is looked up by name when it runs (``native.function``)."""
    calls = []
    lookup = native.function
    monkeypatch.setattr(native, "function", lambda name, *a: calls.append(name) or lookup(name, *a))
    x = torch.randn(2, 30, 6)
    for backend in ("auto", "native", "torch"):
        with kernels.use_backend(backend):
            labels, _, _ = kernels.batched_kmeans(x, 3)
            _, _, offsets, _ = kernels.partition(labels, 3)
            nbr = kernels.partition_knn(x.reshape(60, 6), offsets, 4, 30)
            kernels.max_aggregate(x.reshape(60, 6), nbr)
            kernels.batched_kmeans(x.double(), 3)  # float64: always the reference
    compiled = ["cvig_kmeans", "cvig_partition", "cvig_partition_knn", "cvig_max_aggregate"]
    assert calls == compiled * 2


# --------------------------------------------------------------------------------------------
# building and loading
# --------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """A process that has not built the kernels yet, with its cache in ``tmp_path``."""
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv(native.ENV_DIR, str(tmp_path))
    return tmp_path


def _library_files(directory):
    return sorted(directory.glob("clustervig_cpu-*.so"))


def test_build_is_cached_and_reused(fresh_build, monkeypatch):
    assert native.available()
    (path,) = _library_files(fresh_build)
    assert native.library_path() == path
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_compile", lambda *a: pytest.fail("rebuilt a cached library"))
    assert native.available() and native.library_path() == path


@pytest.mark.parametrize("content", ["truncated", "foreign"])
def test_a_corrupt_or_foreign_cached_library_is_reported_and_rebuilt(fresh_build, content):
    assert native.available()
    (path,) = _library_files(fresh_build)
    # The bad file replaces the cached one under its name (another process's doing): writing
    # into the file this process has mapped would crash it (SIGBUS) when it next touches it.
    bad = fresh_build / "bad.so"
    if content == "truncated":
        bad.write_bytes(path.read_bytes()[:200])
    else:  # a valid shared library that is not ours
        source = fresh_build / "foreign.c"
        source.write_text("int answer(void) { return 42; }\n")
        compiler = native._compiler()
        subprocess.run([*compiler, "-shared", "-fPIC", "-o", str(bad), str(source)], check=True)
    os.replace(bad, path)
    native._state.clear()
    with pytest.warns(native.NativeBuildWarning, match="unusable.*rebuilding"):
        assert native.available()
    x = torch.randn(2, 30, 6)
    assert torch.equal(native_kmeans(x, 3, 20)[0], reference.kmeans(x.double(), 3, 20)[0])


def test_without_a_compiler_the_references_run_after_one_warning(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "clustervig-no-such-compiler")
    x = torch.randn(2, 30, 6)
    with pytest.warns(native.NativeBuildWarning, match="no C compiler.*references") as caught:
        labels, centroids, _ = kernels.batched_kmeans(x, 3)
        kernels.batched_kmeans(x, 3)
    assert len(caught) == 1
    assert not native.available() and "clustervig-no-such-compiler" in native.build_error()
    assert torch.equal(labels, reference.kmeans(x, 3)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        with kernels.use_backend("native"), pytest.raises(RuntimeError, match="backend 'native'"):
            kernels.batched_kmeans(x, 3)


def test_a_failing_compiler_is_reported_with_its_message(fresh_build, monkeypatch, tmp_path):
    fake = tmp_path / "fake-cc"
    fake.write_text("#!/bin/sh\necho 'fake-cc: internal error' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.warns(native.NativeBuildWarning, match="internal error"):
        assert not native.available()
    assert not _library_files(fresh_build), "a failed build left a file behind"


def test_a_read_only_cache_directory_still_gets_kernels(fresh_build, monkeypatch):
    fresh_build.chmod(0o500)
    monkeypatch.setattr(native, "_writable", lambda path: False)  # also when run as root
    try:
        assert native.available()
        assert native.library_path().parent != fresh_build
    finally:
        fresh_build.chmod(0o700)


def test_cc_may_carry_options(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "cc -DCLUSTERVIG_TEST_OPTION=1")
    assert native.available()


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs cc")
def test_the_sources_compile_without_warnings():
    """The C sources are warning-free under -Wall -Wextra (a warning there is often a bug)."""
    sources = [str(path) for path in native.sources()]
    include = str(native.sources()[0].parent)  # csrc/: abi.c and the shared headers
    done = subprocess.run(
        ["cc", "-O2", "-std=gnu11", "-Wall", "-Wextra", "-fsyntax-only", "-I", include, *sources],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


# --------------------------------------------------------------------------------------------
# a cache nobody else can plant a library in
# --------------------------------------------------------------------------------------------
_PLANTED = """
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen("%s", "w");
    if (f) { fputs("ran", f); fclose(f); }
}
int cvig_abi_version(void) { return %d; }
"""


def _plant(directory, marker):
    """A library with the right interface version under the name this machine's build would
    take, whose constructor writes ``marker`` when it is loaded."""
    compiler = native._compiler()
    source = directory.parent / "planted.c"
    source.write_text(_PLANTED % (marker, native.ABI_VERSION))
    target = directory / f"clustervig_cpu-{native._build_key(compiler)}.so"
    subprocess.run([*compiler, "-shared", "-fPIC", "-o", str(target), str(source)], check=True)
    return target


def _first_use(directory, env_extra=None):
    """``kernels.native.available()`` in a fresh process with the cache in ``directory``."""
    env = {**os.environ, native.ENV_DIR: str(directory), **(env_extra or {})}
    code = (
        "import warnings, kernels.native as n\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    ok = n.available()\n"
        "print(ok)\n"
        "print(n.build_error())\n"
        "print(' | '.join(str(x.message) for x in w))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


@pytest.mark.parametrize("mode", [0o775, 0o777])
def test_a_library_planted_in_a_shared_cache_directory_is_never_loaded(tmp_path, mode):
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    cache.mkdir()
    _plant(cache, marker)
    cache.chmod(mode)
    ok, error, warned = _first_use(cache)
    assert not marker.exists(), "the planted library's constructor ran"
    assert ok == "False" and "refusing" in error and "writable by" in error
    assert "references" in warned


def test_a_library_planted_without_a_record_in_a_private_directory_is_rebuilt(tmp_path):
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    cache.mkdir(mode=0o700)
    planted = _plant(cache, marker)
    ok, error, warned = _first_use(cache)
    assert not marker.exists(), "the planted library's constructor ran"
    assert ok == "True" and "no record of its SHA-256" in warned and "rebuilding" in warned
    assert native._record_path(planted).read_text().strip() == native._digest(planted)


def test_a_truncated_cached_library_is_rebuilt_and_the_process_completes(tmp_path):
    """Half a library passes dlopen's header checks and dies with SIGBUS when its pages are
    touched; its hash catches it before it is loaded."""
    cache = tmp_path / "cache"
    assert _first_use(cache)[0] == "True"
    (library,) = _library_files(cache)
    assert cache.stat().st_mode & 0o777 == 0o700  # created private
    whole = library.read_bytes()
    library.write_bytes(whole[: len(whole) // 2])
    ok, _, warned = _first_use(cache)
    assert ok == "True" and "differs" in warned and "rebuilding" in warned
    assert native._digest(library) == native._record_path(library).read_text().strip()


def test_a_fallback_directory_is_private_and_removed_at_exit(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    code = (
        "import kernels.native as n\n"
        "assert n.available()\n"
        "d = n.library_path().parent\n"
        "import os; print(d); print(oct(os.stat(d).st_mode & 0o777))\n"
    )
    env = {**os.environ, native.ENV_DIR: str(blocked / "sub")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    directory, mode = done.stdout.split()
    assert mode == "0o700" and not os.path.exists(directory)
