"""COCO instances json: the reader, data.yaml splits, `data convert --coco`, and the --save-json round trip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from yoloslim.cli import main
from yoloslim.data.coco import load_coco
from yoloslim.data.dataset import DetectionDataset, load_data
from yoloslim.data.synth import CLASSES, render_image, synthesize
from yoloslim.engine.metrics import DetectionMetrics
from yoloslim.errors import UserError
from yoloslim.models import create_model
from yoloslim.models.io import ModelInfo, save_model


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("coco"), fmt="coco", images=8, imgsz=80, seed=2, progress=False).parent


def _edit(root: Path, tmp_path: Path, split: str = "val") -> tuple[Path, dict]:
    """A copy of the data set and the parsed json of one split, to be changed and written back."""
    dst = tmp_path / "coco"
    shutil.copytree(root, dst)
    yml = dst / "data.yaml"
    cfg = yaml.safe_load(yml.read_text())
    cfg["path"] = str(dst)
    yml.write_text(yaml.safe_dump(cfg))
    return dst, json.loads((dst / "annotations" / f"instances_{split}.json").read_text())


def _save(root: Path, data: dict, split: str = "val") -> None:
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def test_data_yaml_with_coco_splits_reads_boxes_exactly(coco_root: Path) -> None:
    src = load_data(coco_root / "data.yaml")
    assert src.fmt == "coco" and src.names == list(CLASSES) and src.problems == []
    assert [len(src.splits[k]) for k in ("train", "val")] == [6, 2]
    s = src.splits["val"][1]
    _, boxes, classes = render_image(2, 7, 80)
    assert s.path.name == "000007.jpg"
    np.testing.assert_allclose(s.boxes, boxes, atol=1e-4)
    assert np.array_equal(s.classes, classes) and not s.difficult.any()


def test_category_ids_crowd_negatives_and_bad_annotations(coco_root: Path, tmp_path: Path) -> None:
    root, data = _edit(coco_root, tmp_path)
    # category ids with gaps, listed out of order: contiguous classes in id order, names kept
    data["categories"] = [{"id": 90, "name": "late"}, {"id": 3, "name": "early"}]
    for k, a in enumerate(data["annotations"]):
        a["category_id"] = 3 if k % 2 else 90
    a0 = data["annotations"][0]
    a0["iscrowd"] = 1
    img1 = data["annotations"][-1]["image_id"]
    extra = [
        {"id": 900, "image_id": img1, "category_id": 77, "bbox": [1, 1, 5, 5]},  # unknown category
        {"id": 901, "image_id": img1, "category_id": 3, "bbox": [70, 70, 30, 30]},  # past the image: clipped
        {"id": 902, "image_id": img1, "category_id": 3, "bbox": [1, 2]},  # malformed
        {"id": 903, "image_id": 12345, "category_id": 3, "bbox": [1, 1, 5, 5]},  # unknown image
    ]
    data["annotations"] += extra
    data["images"].append({"id": 555, "file_name": "neg.jpg", "width": 80, "height": 80})  # a negative
    shutil.copyfile(root / "images" / "val" / data["images"][0]["file_name"], root / "images" / "val" / "neg.jpg")
    data["images"].append({"id": 556, "file_name": "gone.jpg", "width": 80, "height": 80})  # missing file
    _save(root, data)
    part = load_coco(root / "annotations" / "instances_val.json", root / "images" / "val")
    assert part.names == ["early", "late"]
    by_name = {s.path.name: s for s in part.samples}
    assert set(by_name) == {"000006.jpg", "000007.jpg", "neg.jpg"}
    assert len(by_name["neg.jpg"].classes) == 0
    first = by_name[data["images"][0]["file_name"]]
    assert first.difficult[0] and int(first.classes[0]) == 1 and part.crowd == 1
    last = by_name["000007.jpg"]
    assert last.boxes[-1].tolist() == [70, 70, 80, 80]
    msgs = " | ".join(str(p) for p in part.problems)
    assert "unknown category id 77" in msgs and "outside the image (clipped)" in msgs
    assert "without a valid bbox" in msgs and "1 annotation(s) of an unknown image id" in msgs
    assert "gone.jpg: image file missing" in msgs
    # through the data.yaml, without names: the classes are the json's categories
    cfg = yaml.safe_load((root / "data.yaml").read_text())
    for key in ("names", "nc", "train"):
        cfg.pop(key)
    cfg["train"] = cfg["val"]
    (root / "data.yaml").write_text(yaml.safe_dump(cfg))
    src = load_data(root / "data.yaml")
    assert src.names == ["early", "late"] and src.backgrounds["val"] == 1


def test_corrupt_json_and_bare_json_split(coco_root: Path, tmp_path: Path) -> None:
    root, _ = _edit(coco_root, tmp_path)
    cfg = yaml.safe_load((root / "data.yaml").read_text())
    cfg["train"], cfg["val"] = "annotations/instances_train.json", "annotations/instances_val.json"
    (root / "data.yaml").write_text(yaml.safe_dump(cfg))
    assert len(load_data(root / "data.yaml").splits["val"]) == 2  # images/val/ found for instances_val.json
    (root / "images" / "val").rename(root / "pics")
    with pytest.raises(UserError, match="no image folder found"):
        load_data(root / "data.yaml")
    (root / "pics").rename(root / "val")
    assert len(load_data(root / "data.yaml").splits["val"]) == 2
    (root / "annotations" / "instances_val.json").write_text('{"images": [')
    with pytest.raises(UserError, match="instances_val.json: not valid JSON"):
        load_data(root / "data.yaml")
    (root / "annotations" / "instances_val.json").write_text('{"annotations": []}')
    with pytest.raises(UserError, match="not a COCO instances file"):
        load_data(root / "data.yaml")


def test_convert_coco_cli(coco_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, data = _edit(coco_root, tmp_path, "train")
    data["annotations"][0]["iscrowd"] = 1
    _save(root, data, "train")
    out = tmp_path / "yolo"
    rc = main(["data", "convert", "--coco", str(root / "annotations" / "instances_train.json"), "--images",
               str(root / "images" / "train"), "--out", str(out), "--val-ratio", "0.5"])
    assert rc == 0
    assert "1 difficult/crowd object(s) left out" in capsys.readouterr().out
    src = load_data(out / "data.yaml")
    assert [len(src.splits[k]) for k in ("train", "val")] == [3, 3]
    n_boxes = sum(len(s.classes) for v in src.splits.values() for s in v)
    assert n_boxes == len(data["annotations"]) - 1
    assert main(["data", "convert", "--coco", str(root / "annotations" / "instances_train.json"),
                 "--out", str(tmp_path / "y2")]) == 2  # --images missing: one line, exit 2


def test_save_json_ground_truth_round_trips_to_the_same_map(coco_root: Path, tmp_path: Path) -> None:
    """Metrics level: ground truth (with ignored boxes) -> ground_truth.json -> this reader -> same mAP."""
    src = load_data(coco_root / "data.yaml")
    samples = src.splits["train"]
    rng = np.random.default_rng(0)
    metrics = DetectionMetrics(src.names)
    dets = {}
    for i, s in enumerate(samples):
        ign = np.arange(len(s.classes)) == 0  # the first box of each image is ignored (crowd)
        jitter = s.boxes + rng.normal(0, 2, s.boxes.shape)
        score = rng.uniform(0.1, 1, len(s.boxes))
        dets[i] = (jitter, score, s.classes)
        metrics.add(i, s.boxes, s.classes, ign, jitter, score, s.classes, width=s.width, height=s.height)
    first = metrics.compute()
    _, gt = metrics.write_coco(tmp_path / "json", [s.path.name for s in samples])
    back = load_coco(gt, coco_root / "images" / "train")
    assert back.names == src.names and back.crowd == len(samples)
    again = DetectionMetrics(back.names)
    for i, s in enumerate(back.samples):
        again.add(i, s.boxes, s.classes, s.difficult, *dets[i], width=s.width, height=s.height)
    second = again.compute()
    assert first.map > 0.1
    assert second.map == pytest.approx(first.map, abs=1e-9) and second.map50 == pytest.approx(first.map50, abs=1e-9)
    assert second.per_class == first.per_class


@pytest.mark.slow
def test_val_on_its_own_ground_truth_json(tiny_data: Path, tmp_path: Path) -> None:
    """`val --save-json`, then `val` on a data.yaml whose val split is that ground_truth.json: same numbers."""
    names = yaml.safe_load(tiny_data.read_text())["names"]
    model = create_model("yolov5n", nc=len(names))
    weights = save_model(tmp_path / "m.safetensors", model, ModelInfo(model.spec, names, 64))
    first = tmp_path / "first.json"
    args = ["val", "--weights", str(weights), "--imgsz", "64", "--workers", "0"]
    assert main([*args, "--data", str(tiny_data), "--save-json", str(tmp_path / "cj"), "--json", str(first)]) == 0
    cfg = yaml.safe_load(tiny_data.read_text())
    images = tiny_data.parent / cfg.get("path", ".") / cfg["val"]  # data synth writes no path: (relative)
    data2 = tmp_path / "data.yaml"
    data2.write_text(yaml.safe_dump({"train": {"annotations": str(tmp_path / "cj" / "ground_truth.json"),
                                               "images": str(images)},
                                     "val": {"annotations": str(tmp_path / "cj" / "ground_truth.json"),
                                             "images": str(images)}}))
    second = tmp_path / "second.json"
    assert main([*args, "--data", str(data2), "--json", str(second)]) == 0
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert a["instances"] > 0 and a["images"] == b["images"]
    for key in ("map50", "map", "precision", "recall", "instances", "per_class"):
        assert a[key] == b[key], key


def test_crowd_boxes_are_no_training_targets(coco_root: Path, tmp_path: Path) -> None:
    root, data = _edit(coco_root, tmp_path)
    first = data["annotations"][0]
    first["iscrowd"] = 1
    _save(root, data)
    samples = load_data(root / "data.yaml").splits["val"]
    s = next(s for s in samples if s.difficult.any())
    ds = DetectionDataset([s], 80)
    _, targets, _, _ = ds[0]
    assert len(targets) == len(s.classes) - 1 == int((~s.difficult).sum())
