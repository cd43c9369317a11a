"""ONNX export (DEGC ops translated to standard operators) checked with ONNX Runtime, and
torch.export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kernels
from clustervig import create_model, export, onnx_translations
from clustervig.__main__ import main
from clustervig.export import check_onnx, export_onnx, export_program, onnx_ops
from tests.helpers import (
    calibrated_model,
    integer_features,
    neighbour_distances,
    offsets_from_sizes,
    random_partition_sizes,
)

onnxruntime = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _ort(path, x):
    session = onnxruntime.InferenceSession(str(path))
    return session.run(None, {"images": x.numpy()})[0]


@pytest.mark.slow
def test_cvig_ti_onnx_runtime_matches_pytorch(tmp_path):
    """Tolerance: 1e-4 of the logits' scale (float32 rounding; both sides pick the same
    clusters and neighbours)."""
    model = calibrated_model("cvig_ti")
    x = torch.randn(2, 3, 224, 224)
    path = export_onnx(model, tmp_path / "cvig_ti.onnx", batch=2)
    with torch.no_grad():
        expected = model(x).numpy()
    got = _ort(path, x)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_onnx_ops_equal_the_custom_ops_in_pytorch():
    """The translations, run eagerly, give the custom ops' logits (same clusters, partitions
    and neighbours; k-means runs all 20 iterations there, a fixed point once converged)."""
    model = calibrated_model("cvig_ti", img_size=64)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        with onnx_ops(model):
            got = model(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "shallow"), [("pvig_ti", {"blocks": (1, 1, 1, 1)}), ("ivig_ti", {"depth": 1})]
)
def test_vig_baselines_onnx_runtime_matches_pytorch(name, shallow, tmp_path):
    """Tolerance: 1e-4 of the logits' scale, on PViG-Ti with one block per stage (a graph layer
    at every resolution) and IViG-Ti with one block. Both export every op exactly: measured
    ~3e-6 of scale.

    At full depth the random-weight models are compared loosely (finite, correlated): their
    dense k-NN ranks thousands of near-equal distances, and float rounding that differs between
    PyTorch's and ONNX Runtime's matmuls flips some 9th/10th neighbours, which later layers
    amplify (IViG-Ti at depth 3 is already off by ~3e-3 of scale, depth 1 by ~1e-6)."""
    x = torch.randn(1, 3, 224, 224)
    model = calibrated_model(name, **shallow)
    got = _ort(export_onnx(model, tmp_path / f"{name}-shallow.onnx"), x)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()

    model = calibrated_model(name)
    got = _ort(export_onnx(model, tmp_path / f"{name}.onnx"), x)
    with torch.no_grad():
        expected = model(x).numpy()
    assert got.shape == expected.shape and np.isfinite(got).all()
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.5


@pytest.mark.slow
def test_torch_export_program_runs_and_matches(tmp_path):
    torch.manual_seed(0)
    model = create_model("cvig_ti", img_size=64).eval()
    path = export_program(model, tmp_path / "cvig_ti.pt2", img_size=64)
    program = torch.export.load(str(path))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), atol=1e-5, rtol=1e-5)


def test_export_cli(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "cvig_ti", "--img-size", "64", "--out", str(out)]) == 0
    assert out.exists() and "wrote" in capsys.readouterr().out
    assert main(["export", "nope"]) == 2
    assert "'name'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The translations, op by op, against the custom ops
# ---------------------------------------------------------------------------------------------
def _export_function(fn, args, path, names):
    """``fn(*args)`` alone as an ONNX graph (dynamic first axis of every input)."""

    class Wrapper(torch.nn.Module):
        def forward(self, *inputs):
            return fn(*inputs)

    with torch.no_grad():
        torch.onnx.export(
            Wrapper(),
            args,
            str(path),
            input_names=names,
            opset_version=export.ONNX_OPSET,
            dynamic_axes={n: {0: "rows"} for n in names},
            dynamo=False,
        )
    return onnxruntime.InferenceSession(str(path))


@pytest.mark.parametrize(("B", "N", "C", "kappa", "iters"), [(1, 25, 8, 4, 20), (5, 49, 6, 3, 2)])
def test_kmeans_translation_is_a_loop_with_the_ops_answers(B, N, C, kappa, iters, tmp_path):
    """Integer features (the first assignment's distances exact, ties to the lower cluster on
    both sides). With ``iters=2`` some images stop at the cap and others converge first: the
    batch loop gives each the op's answer. The exported graph holds one Loop (not ``iters``
    unrolled passes) and runs at another batch size than the one traced."""
    gen = torch.Generator().manual_seed(B * N)
    x = integer_features(B * N, C, torch.float32, generator=gen).reshape(B, N, C)
    labels, centroids, _ = kernels.batched_kmeans(x, kappa, iters)
    got_labels, got_centroids, _ = onnx_translations.kmeans(x, kappa, iters)
    assert torch.equal(got_labels, labels)
    torch.testing.assert_close(got_centroids, centroids, atol=1e-5, rtol=1e-5)

    def fn(x):
        return onnx_translations.kmeans(x, kappa, iters)[:2]

    session = _export_function(fn, (x[:1],), tmp_path / "kmeans.onnx", ["x"])
    graph = onnx.load(str(tmp_path / "kmeans.onnx")).graph
    assert [n.op_type for n in graph.node].count("Loop") == 1
    assert [n.op_type for n in graph.node].count("ArgMax") == 1  # the first assignment only
    ort_labels, ort_centroids = session.run(None, {"x": x.numpy()})
    assert np.array_equal(ort_labels, labels.numpy())
    np.testing.assert_allclose(ort_centroids, centroids.numpy(), atol=1e-5, rtol=1e-5)


def test_kmeans_translation_keeps_labels_valid_for_non_finite_nodes():
    x = torch.randn(2, 30, 4)
    x[0, 3] = float("nan")
    x[1, :5] = float("inf")
    labels, _, _ = onnx_translations.kmeans(x, 4, 20)
    assert labels.min() >= 0 and labels.max() < 4
    assert int(labels[0, 3]) == int(kernels.batched_kmeans(x, 4, 20)[0][0, 3]) == 0


@pytest.mark.parametrize(("B", "N", "kappa", "k"), [(1, 30, 4, 9), (3, 40, 5, 12), (2, 9, 4, 6)])
def test_knn_translation_equals_the_op_on_ragged_partitions(B, N, kappa, k, tmp_path):
    """Ragged partitions, some smaller than K (repeated members), some empty; integer
    features: every distance exact, with exact ties. In ONNX Runtime (another batch than the
    one traced) the lists equal the op's, ids included: its TopK breaks ties by the lower index
    as the op does. Run eagerly, ``torch.topk`` orders tied entries as it likes, so there the
    lists hold the same distances (equally good answers)."""
    gen = torch.Generator().manual_seed(N + k)
    sizes = random_partition_sizes(B, N, kappa, generator=gen)
    offsets = offsets_from_sizes(sizes.reshape(-1)).int()
    x = integer_features(B * N, 6, torch.float32, generator=gen)
    perm = torch.cat([torch.randperm(N, generator=gen) + b * N for b in range(B)]).int()
    want = kernels.partition_knn(x, offsets, k, N, perm=perm)
    got = onnx_translations.partition_knn(x, offsets, k, N, perm=perm)
    assert torch.equal(neighbour_distances(x, got), neighbour_distances(x, want))
    segment = torch.bucketize(torch.argsort(perm.long()), offsets[1:].long(), right=True)
    assert torch.equal(segment[got.long()], segment.unsqueeze(1).expand(-1, k))  # own partition

    def fn(x, offsets, perm):
        return onnx_translations.partition_knn(x, offsets, k, N, perm=perm)

    one = offsets_from_sizes(sizes[0]).int()
    session = _export_function(
        fn, (x[:N], one, perm[:N] % N), tmp_path / "knn.onnx", ["x", "offsets", "perm"]
    )
    feed = {"x": x.numpy(), "offsets": offsets.numpy(), "perm": perm.numpy()}
    assert np.array_equal(session.run(None, feed)[0], want.numpy())


def test_grouped_local_update_exports_its_products(tmp_path):
    """CViG-S's local-update MLP has 4 channel groups; in PyTorch inference each group's
    products are written into their columns of one output (``out=``), which a trace does not
    follow: the export takes the separate products."""
    model = calibrated_model("cvig_s", img_size=64, depth=2)
    x = torch.randn(2, 3, 64, 64)
    got = _ort(export_onnx(model, tmp_path / "s.onnx", img_size=64), x)
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_exported_model_takes_any_batch_size(tmp_path):
    model = calibrated_model("cvig_ti", img_size=64, depth=2)
    path = export_onnx(model, tmp_path / "dyn.onnx", img_size=64, batch=2)
    session = onnxruntime.InferenceSession(str(path))
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            want = model(x)
        got = session.run(None, {"images": x.numpy()})[0]
        assert got.shape == tuple(want.shape)
        assert np.abs(got - want.numpy()).max() <= 1e-4 * float(want.abs().max())
    fixed = export_onnx(model, tmp_path / "fixed.onnx", img_size=64, batch=2, dynamic_batch=False)
    assert onnxruntime.InferenceSession(str(fixed)).get_inputs()[0].shape[0] == 2


@pytest.mark.slow
def test_onnx_runtime_moves_decisions_no_more_than_float64_does(tmp_path):
    """CViG-Ti at full depth, two model seeds x 4 images drawn independently of the export's
    example, against PyTorch in float32. A near-tie (a k-NN or k-means choice within float32
    rounding of its alternative) is decided either way by any change of rounding and amplified
    by later layers: PyTorch in float64 moves about one image in six by more than 1e-4 of the
    logits' scale (reports/results/deploy/parity-*). ONNX Runtime must stay within 1e-4 on
    most images, about as often as float64 does, with the same top-1 on those."""
    ort_close = exact_close = 0
    for seed in (0, 1):
        model = calibrated_model("cvig_ti", seed=seed)
        session = onnxruntime.InferenceSession(str(export_onnx(model, tmp_path / "m.onnx")))
        x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(100 + seed))
        with torch.no_grad():
            want = model(x)
            exact = model.double()(x.double())
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        scale = want.abs().amax(1)
        close = (got - want).abs().amax(1) / scale <= 1e-4
        ort_close += int(close.sum())
        exact_close += int((((exact - want.double()).abs().amax(1) / scale) <= 1e-4).sum())
        assert torch.equal(got.argmax(1)[close], want.argmax(1)[close])
    assert ort_close >= 5 and ort_close >= exact_close - 1, (ort_close, exact_close)


def test_check_onnx_reports_agreement_and_disagreement(tmp_path, monkeypatch):
    model = calibrated_model("cvig_ti", img_size=64, depth=1)
    path = export_onnx(model, tmp_path / "m.onnx", img_size=64)
    images = torch.randn(5, 3, 64, 64)
    result = check_onnx(model, path, images, batch=2)
    assert result["passed"] and result["images"] == 5 and result["top1_agree"] == 5
    assert result["max_rel_diff"] <= 1e-4
    other = calibrated_model("cvig_ti", seed=1, img_size=64, depth=1)  # other weights
    result = check_onnx(other, path, images)
    assert not result["passed"] and result["max_rel_diff"] > 1e-3


def test_export_check_cli(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    out = tmp_path / "m.onnx"
    args = ["export", "cvig_ti", "--img-size", "64", "--model-args", "depth=1", "--out", str(out)]
    assert main([*args, "--check", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "top-1 equal on 3/3 images" in printed and "check passed" in printed
    assert main([*args, "--check", str(tmp_path / "missing.png")]) == 2
    assert "no image file or folder" in capsys.readouterr().err
    assert main([*args, "--format", "pt2", "--check"]) == 2
    assert "--format onnx" in capsys.readouterr().err
    (tmp_path / "broken.png").write_text("not an image")
    assert main([*args, "--check", str(tmp_path / "broken.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err
