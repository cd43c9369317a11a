"""Detection with this project's backbones: the detectors build and run, the COCO-format data is
checked, training on the demo set lowers the loss, evaluates with pycocotools and resumes."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("pycocotools")
pytest.importorskip("torchvision")

from clustervig.detect import build_detector, split_name  # noqa: E402
from clustervig.detect.data import CocoInstances, DetectionDataError  # noqa: E402
from clustervig.detect.demo import write_demo  # noqa: E402
from clustervig.detect.predict import main as predict_main  # noqa: E402
from clustervig.detect.train import main as train_main  # noqa: E402

SMALL = {"depth": 4}  # a 4-block CViG-Ti (one block a feature tap): the pipeline, not accuracy


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    write_demo(out, train=12, val=4, size=64, seed=1)
    return out


@pytest.mark.parametrize("kind", ["maskrcnn", "fasterrcnn", "retinanet"])
def test_detectors_build_train_and_predict(kind):
    model = build_detector(f"{kind}_cvig_ti", 3, min_size=64, max_size=64, backbone_options=SMALL)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 80)]
    targets = [
        {
            "boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]),
            "labels": torch.tensor([1]),
            "masks": torch.zeros(1, *im.shape[1:], dtype=torch.uint8),
        }
        for im in images
    ]
    losses = model.train()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    out = model.eval()(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4
    assert ("masks" in out[0]) == (kind == "maskrcnn")


def test_detector_names_and_frozen_norms():
    assert split_name("MaskRCNN_CViG-S") == ("maskrcnn", "cvig_s")
    for bad in ("yolo_cvig_s", "maskrcnn", "maskrcnn_resnet50", 3):
        with pytest.raises(ValueError, match="argument 'model'"):
            split_name(bad)
    with pytest.raises(ValueError, match="'num_classes'"):
        build_detector("fasterrcnn_cvig_ti", 1)
    model = build_detector("fasterrcnn_pvig_ti", 5, frozen_norms=True).train()
    norms = [m for m in model.backbone.body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(not m.training for m in norms)
    assert all(not p.requires_grad for m in norms for p in m.parameters())


def test_demo_set_is_coco_with_masks_inside_boxes(demo):
    data = CocoInstances(demo / "train", demo / "annotations" / "instances_train.json")
    assert len(data) == 12 and data.num_classes == 11
    image, target = data[0]
    assert image.shape == (3, 64, 64) and 0 <= float(image.min()) and float(image.max()) <= 1
    for box, mask in zip(target["boxes"], target["masks"], strict=True):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert xs.min() >= box[0] - 1 and xs.max() <= box[2] and ys.min() >= box[1] - 1


def test_bad_data_gets_a_clear_message(demo, tmp_path):
    annotations = json.loads((demo / "annotations" / "instances_train.json").read_text())
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DetectionDataError, match="not valid JSON"):
        CocoInstances(demo / "train", broken)
    broken.write_text(json.dumps({"images": []}))
    with pytest.raises(DetectionDataError, match="lacks the list"):
        CocoInstances(demo / "train", broken)
    broken.write_text(json.dumps({**annotations, "annotations": []}))
    with pytest.raises(DetectionDataError, match="no annotations"):
        CocoInstances(demo / "train", broken)
    missing = {**annotations, "images": [*annotations["images"], {"id": 999, "file_name": "x.png"}]}
    broken.write_text(json.dumps(missing))
    with pytest.raises(DetectionDataError, match="missing from"):
        CocoInstances(demo / "train", broken)


def test_training_lowers_the_loss_evaluates_and_resumes(demo, tmp_path, capsys):
    out = tmp_path / "run"
    common = [
        "--data", str(demo), "--model", "maskrcnn_cvig_ti", "--recipe", "demo",
        "--backbone-args", "depth=4", "--batch-size", "4", "--min-size", "64", "--max-size", "64",
        "--eval-size", "64", "--output", str(out),
    ]  # fmt: skip
    assert train_main([*common, "--epochs", "3"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert {"bbox_ap", "bbox_ap50", "segm_ap"} <= set(rows[0])  # pycocotools' COCOeval
    assert (out / "best.pt").is_file() and (out / "curves.png").is_file()
    assert train_main([*common, "--epochs", "4", "--resume", str(out / "last.pt")]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert train_main([*common, "--epochs", "4"]) == 2  # an earlier run is kept
    assert "--resume" in capsys.readouterr().err
    drawing = tmp_path / "pred.png"
    image = demo / "val" / "00000.png"
    args = [str(image), "--checkpoint", str(out / "last.pt"), "--out", str(drawing)]
    assert predict_main([*args, "--threshold", "0.0"]) == 0
    assert drawing.is_file()
    assert predict_main([str(tmp_path / "none.png"), "--checkpoint", str(out / "last.pt")]) == 2


def test_train_cli_reports_bad_data_in_one_line(tmp_path, capsys):
    code = train_main(["--data", str(tmp_path), "--output", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no annotation file" in err and "Traceback" not in err
