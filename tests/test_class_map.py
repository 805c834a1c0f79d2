"""Scoring and fine-tuning by class name: matching names, the head's rows, val / prune / train using them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from yoloslim.cli import main
from yoloslim.data.class_map import match_classes
from yoloslim.engine.train_setup import initial_model
from yoloslim.errors import UserError
from yoloslim.models import build_model, create_model, model_spec
from yoloslim.models.decode import Decoder
from yoloslim.models.head_classes import class_rows, select_classes
from yoloslim.models.io import ModelInfo, load_model, save_model
from yoloslim.workflows.prune import prune

COCOISH = ["person", "airplane", "dining table", "motorcycle", "tv", "dog"]


def test_match_by_name_loosely_and_through_a_map(tmp_path: Path) -> None:
    m = match_classes(COCOISH, ["dog", "person"])
    assert m.ids == [5, 0] and not m.identity and m.renamed == {}
    m = match_classes(COCOISH, ["diningtable", "Dog"])
    assert m.ids == [2, 5] and m.renamed == {"diningtable": "dining table", "Dog": "dog"}
    cmap = tmp_path / "voc2coco.yaml"
    cmap.write_text("aeroplane: airplane\nmotorbike: motorcycle\ntvmonitor: tv\nsofa: couch\n")
    m = match_classes(COCOISH, ["aeroplane", "person", "tvmonitor"], cmap)
    assert m.ids == [1, 0, 4] and "aeroplane -> airplane" in m.describe()
    assert match_classes(COCOISH, list(COCOISH)).identity


def test_unknown_names_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"class aeroplane is not among the model's 6 classes \(did you mean "
                                        r"airplane\?\); map names with --class-map"):
        match_classes(COCOISH, ["person", "aeroplane"])
    cmap = tmp_path / "bad.yaml"
    cmap.write_text("aeroplane: aircraft\n")
    with pytest.raises(UserError, match="aircraft is not a class of the model"):
        match_classes(COCOISH, ["aeroplane"], cmap)
    with pytest.raises(UserError, match="both match the model's class dog"):
        match_classes(COCOISH, ["dog", "Dog"])
    cmap.write_text("- not a mapping\n")
    with pytest.raises(UserError, match="a class map is a YAML mapping"):
        match_classes(COCOISH, ["dog"], cmap)
    # fine-tuning: unknown classes are new (-1); names sharing nothing in equal number: by position
    assert match_classes(COCOISH, ["dog", "hand"], allow_new=True).ids == [5, -1]
    assert match_classes(["a", "b"], ["x", "y"]).how == "position"
    assert match_classes([], ["x", "y"], nc=2).ids == [0, 1]


@pytest.mark.parametrize("name", ["yolov5n", "yolox-nano", "yolov3-tiny"])
def test_selected_head_gives_the_same_scores(name: str) -> None:
    model = build_model(model_spec(name, 5)).eval()
    ids = [3, 1, 4]
    sub = select_classes(model, ids).eval()
    assert sub.spec.nc == 3
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        full, part = Decoder(model.spec)(model(x)), Decoder(sub.spec)(sub(x))  # (1, N, 5 + nc)
    torch.testing.assert_close(part, full[..., [0, 1, 2, 3, 4, *(5 + i for i in ids)]], rtol=0, atol=1e-6)


def test_class_rows() -> None:
    assert class_rows(2, 1, 3, [2, -1, 0]) == [0, 3, 1, 4, 7, 5]


def _superset_model(tmp_path: Path, names: list[str]) -> tuple[Path, list[str]]:
    """A yolov5n whose classes are the data set's, shuffled, plus two more."""
    model_names = ["zebra", *reversed(names), "kite"]
    model = create_model("yolov5n", nc=len(model_names))
    path = save_model(tmp_path / "big.safetensors", model, ModelInfo(model.spec, model_names, 64))
    return path, model_names


def test_val_scores_a_subset_by_name(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    names = yaml.safe_load(tiny_data.read_text())["names"]
    big, model_names = _superset_model(tmp_path, names)
    args = ["--data", str(tiny_data), "--imgsz", "64", "--workers", "0"]
    assert main(["val", "--weights", str(big), *args, "--json", str(tmp_path / "a.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    assert list(a["per_class"]) == names
    assert a["classes"]["model_ids"] == [model_names.index(n) for n in names]
    # the same as scoring a model file whose head was cut to the data set's classes beforehand
    model, _ = load_model(big)
    small = select_classes(model, a["classes"]["model_ids"])
    path = save_model(tmp_path / "small.safetensors", small, ModelInfo(small.spec, names, 64))
    assert main(["val", "--weights", str(path), *args, "--json", str(tmp_path / "b.json")]) == 0
    b = json.loads((tmp_path / "b.json").read_text())
    assert (a["map"], a["map50"], a["per_class"]) == (b["map"], b["map50"], b["per_class"])
    # a data set class the model does not know: exit 2, one line
    other = tmp_path / "other.yaml"
    cfg = yaml.safe_load(tiny_data.read_text())
    cfg["names"] = ["hand", *names[1:]]
    cfg["path"] = str(tiny_data.parent)  # written elsewhere: data synth's data.yaml is relative to its folder
    other.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["val", "--weights", str(big), "--data", str(other), "--imgsz", "64", "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "class hand is not among the model's 10 classes" in err


def test_prune_data_scores_the_subset(tiny_data: Path, tmp_path: Path) -> None:
    names = yaml.safe_load(tiny_data.read_text())["names"]
    big, _ = _superset_model(tmp_path, names)
    s = prune(str(big), "l1", ratio=0.2, data=str(tiny_data), imgsz=64, workers=0, latency_runs=0,
              out=str(tmp_path / "p.safetensors"))
    assert s["before"]["map"] is not None and s["after"]["map"] is not None


def test_fine_tuning_keeps_the_rows_of_known_classes(tmp_path: Path) -> None:
    src = create_model("yolov5n", nc=len(COCOISH))
    path = save_model(tmp_path / "m.safetensors", src, ModelInfo(src.spec, COCOISH, 64))
    model, info = initial_model(None, str(path), ["dog", "person", "hand"], 64)
    assert model.spec.nc == 3 and info.names == ["dog", "person", "hand"]
    old, new = src.state_dict()["model.24.m.1.weight"], model.state_dict()["model.24.m.1.weight"]
    no, nn_ = 5 + len(COCOISH), 5 + 3
    for a in range(3):  # per anchor: box and objectness rows, then dog, person
        torch.testing.assert_close(new[a * nn_:a * nn_ + 5], old[a * no:a * no + 5])
        torch.testing.assert_close(new[a * nn_ + 5], old[a * no + 5 + 5])
        torch.testing.assert_close(new[a * nn_ + 6], old[a * no + 5 + 0])
    torch.testing.assert_close(model.state_dict()["model.0.conv.weight"], src.state_dict()["model.0.conv.weight"])
    cmap = tmp_path / "map.yaml"
    cmap.write_text("hand: kite\n")
    with pytest.raises(UserError, match="kite is not a class of the model"):
        initial_model(None, str(path), ["dog", "hand"], 64, class_map=str(cmap))
    with pytest.raises(UserError, match="--class-map maps"):
        initial_model("yolov5n", None, ["dog"], 64, class_map=str(cmap))
