"""The inference form (:func:`clustervig.deploy`): batch norms folded, channels-last maps, the
convolution's GELU and residual add fused; the same function as the eval-mode model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clustervig import create_model, deploy, fused
from clustervig.fused import ConvAct
from clustervig.layers import ConvBN, is_channels_last
from tests.helpers import calibrated_model, relative_error

#: Of the logits' scale: float32 rounding of the folded weights and of the fused ops, while both
#: forms pick the same clusters and neighbours (measured: ~4e-6 on CViG-Ti). Deep models are
#: compared where that holds: a k-NN or k-means choice within rounding of its alternative (a
#: near-tie) goes either way under any change of rounding, float64 included, and later layers
#: amplify it (about one image in six at CViG-Ti's full depth: reports/results/deploy/parity-*).
TOLERANCE = 1e-4


def _max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.mark.parametrize(
    ("name", "overrides", "batch"),
    [
        ("cvig_ti", {"depth": 4}, 2),  # 4 DEGC layers at 196 nodes
        ("cvig_ti", {"img_size": 64}, 1),  # full depth, batch 1, 16 nodes per image
        ("pvig_ti", {"blocks": (1, 1, 1, 1)}, 2),  # a graph layer at every resolution
        ("ivig_ti", {"depth": 2}, 3),
    ],
)
def test_inference_form_equals_the_model(name, overrides, batch):
    """Models shallow enough for no near-tie on these inputs (module note on TOLERANCE; the
    baselines' dense k-NN ranks thousands of near-equal distances: see test_export)."""
    model = calibrated_model(name, **overrides)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inference = deploy(model)
    size = overrides.get("img_size", 224)
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        want, got = model(x), inference(x)
    assert _max_error(got, want) <= TOLERANCE
    # The original is untouched: same state, batch norms still there, still trainable.
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in inference.modules())
    assert not any(p.requires_grad for p in inference.parameters())


@pytest.mark.slow
def test_inference_form_at_full_depth_mostly_equals_the_model():
    """CViG-Ti at full depth on 6 images: within TOLERANCE on most (the rest are near-ties,
    module note), and the same top-1 on those."""
    model = calibrated_model("cvig_ti")
    inference = deploy(model)
    x = torch.randn(6, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        want, got = model(x), inference(x)
    error = (got - want).abs().amax(1) / want.abs().amax(1)
    close = error <= TOLERANCE
    assert int(close.sum()) >= 4, error.tolist()
    assert torch.equal(got.argmax(1)[close], want.argmax(1)[close])


def test_inference_form_keeps_channels_last_maps_and_fused_path_matches_unfused(monkeypatch):
    model = calibrated_model("cvig_ti", img_size=64, depth=2)
    inference = deploy(model)
    x = torch.randn(2, 3, 64, 64)
    seen: list[bool] = []
    hooks = [
        block.register_forward_hook(lambda m, i, out: seen.append(is_channels_last(out)))
        for block in inference.backbone
    ]
    with torch.inference_mode():
        fast = inference(x)
        degc_out = inference.backbone[0].degc(inference.input_layout(torch.randn(2, 192, 4, 4)))
    for h in hooks:
        h.remove()
    assert seen and all(seen)
    assert is_channels_last(degc_out)  # a view of the node rows, not a copy
    # Without oneDNN's fused convolutions (another build, or a probe that failed): same values.
    monkeypatch.setattr(ConvAct, "_use_onednn", lambda self, x, residual: False)
    with torch.inference_mode():
        plain = inference(x)
    assert _max_error(fast, plain) <= TOLERANCE


def test_fold_only_keeps_the_standard_layout():
    model = calibrated_model("cvig_ti", img_size=64, depth=2)
    inference = deploy(model, channels_last=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        features = inference.forward_features(x)
        assert features.is_contiguous()
        assert _max_error(inference(x), model(x)) <= TOLERANCE


def test_timm_reparameterize_model_folds_the_same_way():
    timm_model = pytest.importorskip("timm.models")
    model = calibrated_model("cvig_ti", img_size=64, depth=2)
    folded = timm_model.reparameterize_model(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert _max_error(folded(x), model(x)) <= TOLERANCE


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("gelu", [True, False])
def test_conv_act_equals_conv_gelu_add(channels_last, dtype, tol, gelu):
    """Fused (float32 on a CPU with oneDNN) or not (the standard ops), on a 1x1, a strided 3x3
    and a depthwise 7x7 convolution of odd sizes."""
    gen = torch.Generator().manual_seed(1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for conv in (
        nn.Conv2d(12, 20, 1),
        nn.Conv2d(12, 20, 3, stride=2, padding=1),
        nn.Conv2d(12, 12, 7, padding=3, groups=12),
    ):
        conv = conv.to(dtype).to(memory_format=fmt)
        layer = ConvAct.from_conv(conv, gelu=gelu)
        x = torch.randn(3, 12, 9, 7, generator=gen).to(dtype).contiguous(memory_format=fmt)
        with torch.no_grad():
            y = conv(x)
            y = F.gelu(y) if gelu else y
            residual = torch.randn(y.shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
            assert relative_error(layer(x).float(), y.float()) <= tol
            got = layer(x, residual=residual).float()
            assert relative_error(got, (residual + y).float()) <= tol


def test_onednn_probe_decides_once():
    assert fused.onednn_fusion_available() is fused.onednn_fusion_available()


def test_fuse_refuses_training_mode_and_deploy_refuses_foreign_models():
    with pytest.raises(RuntimeError, match="model.eval"):
        ConvBN(4, 4).train().fuse()
    with pytest.raises(TypeError, match="argument 'model'"):
        deploy(nn.Linear(2, 2))


def test_inference_form_is_exported_to_onnx(tmp_path):
    """The exported inference form computes what the model does (the fused ops export as the
    standard ones)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from clustervig.export import export_onnx

    model = calibrated_model("cvig_ti", img_size=64, depth=2)
    path = export_onnx(deploy(model), tmp_path / "deployed.onnx", img_size=64, batch=2)
    x = torch.randn(2, 3, 64, 64)
    got = onnxruntime.InferenceSession(str(path)).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        want = model(x)
    assert _max_error(torch.from_numpy(got), want) <= TOLERANCE


def test_inference_form_compiles_fullgraph():
    """Under ``torch.compile`` the fused convolutions run as the standard ops Inductor fuses."""
    model = deploy(calibrated_model("cvig_ti", img_size=64, depth=1))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True)(x)
        assert _max_error(compiled, model(x)) <= TOLERANCE


@pytest.mark.parametrize("rows", [1, 7, 196])
def test_multiply_rows_equals_the_product_and_follows_a_replaced_weight(rows):
    """oneDNN's packed row product (float32 CPU inference) against ``x @ w.T + add``; a new
    weight tensor (the local update's column cache is replaced, never changed in place, when
    the weight changes) is packed anew, and sizes other than the first reuse the packing."""
    gen = torch.Generator().manual_seed(rows)
    cache: dict = {}
    w = torch.randn(24, 10, generator=gen)
    for m in (rows, rows + 5):
        x = torch.randn(m, 10, generator=gen)
        add = torch.randn(m, 24, generator=gen)
        with torch.no_grad():
            assert fused.can_multiply_rows(x, w) == fused.onednn_fusion_available()
            if not fused.can_multiply_rows(x, w):
                pytest.skip("no oneDNN fused convolution in this build")
            assert relative_error(fused.multiply_rows(x, w, cache), x @ w.T) <= 1e-5
            got = fused.multiply_rows(x, w, cache, add=add)
            assert relative_error(got, x @ w.T + add) <= 1e-5
    w2 = torch.randn(24, 10, generator=gen)
    with torch.no_grad():
        assert relative_error(fused.multiply_rows(x, w2, cache), x @ w2.T) <= 1e-5
    assert not fused.can_multiply_rows(x.requires_grad_(), w)  # autograd: the standard ops


def test_inference_form_of_a_pruned_and_of_a_float64_model():
    """A head removed by prune_intermediate_layers has nothing to fold; a float64 model's merged
    classifier stays float64 (same outputs as the eval model); the form made under
    ``torch.inference_mode`` (its folded weights inference tensors) runs."""
    pruned = calibrated_model("cvig_ti", img_size=64, depth=4)
    pruned.prune_intermediate_layers([1])
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert _max_error(deploy(pruned)(x), pruned(x)) <= TOLERANCE
    wide = calibrated_model("cvig_ti", img_size=64, depth=1).double()
    inference = deploy(wide)
    assert inference.head.head.weight.dtype == torch.float64
    with torch.inference_mode():
        want = wide(x.double())
        assert _max_error(inference(x.double()), want) <= 1e-10


def test_a_model_built_under_inference_mode_runs_and_its_caches_follow_it():
    """Its weights are inference tensors (no version counter): the layers' inference caches
    (weight columns, stacked norms, packed weights) key them by storage instead."""
    with torch.inference_mode():
        torch.manual_seed(0)
        model = create_model("cvig_ti", img_size=64, depth=2).eval()
        x = torch.randn(2, 3, 64, 64)
        first = model(x)
        torch.testing.assert_close(model(x), first)
        torch.testing.assert_close(
            deploy(model)(x), first, atol=1e-4 * float(first.abs().max()), rtol=0
        )
