"""labelme and Oxford Hand converters, and real-world VOC quirks."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from yoloslim.cli import main
from yoloslim.cli.data import SYNTH_FORMATS
from yoloslim.data.convert import convert_labelme, convert_oxford_hand
from yoloslim.data.dataset import load_data
from yoloslim.data.labelme import load_labelme, shape_box
from yoloslim.data.oxford_hand import load_oxford_hand, read_hand_mat, write_hand_mat
from yoloslim.data.synth import CLASSES, FORMATS, render_image, synthesize
from yoloslim.data.voc import load_voc
from yoloslim.errors import UserError

# ---- labelme -------------------------------------------------------------------------------------

def test_shape_types() -> None:
    assert shape_box({"shape_type": "rectangle", "points": [[30, 40], [10, 5]]}) == [10, 5, 30, 40]
    assert shape_box({"shape_type": "polygon", "points": [[1, 9], [7, 2], [4, 12]]}) == [1, 2, 7, 12]
    assert shape_box({"shape_type": "circle", "points": [[10, 10], [13, 14]]}) == [5, 5, 15, 15]
    assert shape_box({"shape_type": "point", "points": [[1, 1]]}) is None
    assert shape_box({"shape_type": "polygon", "points": [[1, 1], [2, 2]]}) is None  # too few points


def test_labelme_convert_round_trip_and_bad_files(tmp_path: Path) -> None:
    root = synthesize(tmp_path / "lm", fmt="labelme", images=6, imgsz=80, seed=3, progress=False)
    names, samples, problems = load_labelme(root)
    assert problems == [] and len(samples) == 6
    s = next(s for s in samples if s.path.name == "000004.jpg")
    _, boxes, classes = render_image(3, 4, 80)
    np.testing.assert_allclose(s.boxes, boxes, atol=1e-4)
    assert [names[c] for c in s.classes] == [CLASSES[c] for c in classes]
    # bad inputs: a corrupt json, a missing image, a polygon, a point, a box outside the image
    (root / "000000.json").write_text("{ not json")
    (root / "000001.jpg").unlink()
    data = json.loads((root / "000002.json").read_text())
    data["imagePath"] = "..\\lm\\000002.jpg"  # Windows separators
    data["shapes"] += [{"label": "blob", "shape_type": "polygon", "points": [[5, 6], [20, 8], [12, 30]]},
                       {"label": "blob", "shape_type": "point", "points": [[3, 3]]},
                       {"label": "blob", "shape_type": "rectangle", "points": [[70, 70], [99, 95]]}]
    (root / "000002.json").write_text(json.dumps(data))
    names, samples, problems = load_labelme(root)
    assert len(samples) == 4 and "blob" in names
    s2 = next(s for s in samples if s.path.name == "000002.jpg")
    blob = names.index("blob")
    assert s2.boxes[s2.classes == blob].tolist() == [[5, 6, 20, 30], [70, 70, 80, 80]]
    msgs = " | ".join(str(p) for p in problems)
    assert "000000.json: not valid JSON" in msgs and "000001.json: image" in msgs
    assert "1 point (skipped)" in msgs and "outside the image (clipped)" in msgs
    names_file = tmp_path / "names.txt"
    names_file.write_text("blob\n")  # a subset: shapes of the other labels are dropped and counted
    only, _, more = load_labelme(root, names_file=names_file)
    assert only == ["blob"] and "of labels not in names" in " | ".join(str(p) for p in more)
    res = convert_labelme(root, tmp_path / "out", val_ratio=0.25, progress=False)
    src = load_data(res.data_yaml)
    assert [len(src.splits[k]) for k in ("train", "val")] == [3, 1] and src.names == names
    with pytest.raises(UserError, match="no labelme .json files"):
        load_labelme(tmp_path / "out" / "labels")


# ---- Oxford Hand ---------------------------------------------------------------------------------

def test_oxford_hand_rotated_boxes_and_splits(tmp_path: Path) -> None:
    pytest.importorskip("scipy")
    root = synthesize(tmp_path / "hand_dataset", fmt="oxford-hand", images=6, imgsz=80, seed=4, progress=False)
    folder = root / "validation_dataset" / "validation_data"
    # a rotated hand: corners [y x], 1-based, as the data set stores them
    quad = np.array([[10, 20], [4, 40], [30, 52], [36, 32]], float)
    write_hand_mat(folder / "annotations" / "000005.mat", [quad, np.array([[70, 70], [70, 99], [95, 99], [95, 70]])])
    boxes = read_hand_mat(folder / "annotations" / "000005.mat")
    np.testing.assert_allclose(boxes, [[19, 3, 51, 35], [69, 69, 98, 94]])
    (folder / "annotations" / "bad.mat").write_bytes(b"not a mat file")
    write_hand_mat(folder / "annotations" / "lost.mat", [quad])  # its image is missing
    shutil.copyfile(folder / "images" / "000005.jpg", folder / "images" / "bad.jpg")
    out = tmp_path / "yolo"
    assert main(["data", "convert", "--oxford-hand", str(root), "--out", str(out)]) == 0
    src = load_data(out / "data.yaml")
    assert src.names == ["hand"] and [len(src.splits[k]) for k in ("train", "val")] == [5, 1]
    got = src.splits["val"][0].boxes
    np.testing.assert_allclose(got, [[19, 3, 51, 35], [69, 69, 80, 80]], atol=1e-3)  # clipped to the image
    s0 = load_data(out / "data.yaml").splits["train"][0]
    _, ref, _ = render_image(4, 0, 80)
    np.testing.assert_allclose(s0.boxes, ref, atol=1e-3)
    res = convert_oxford_hand(root, tmp_path / "yolo2", progress=False)
    assert res.problems == 3  # 000005.mat: a box clipped; bad.mat: not a readable .mat file; lost.mat: no image
    shutil.copyfile(folder / "images" / "000005.jpg", folder / "images" / "extra.jpg")
    src = load_oxford_hand(root)
    msgs = " | ".join(str(p) for p in src.problems)
    assert "lost.mat: image not found" in msgs and "extra.jpg: no annotation file" in msgs


def test_oxford_hand_without_scipy_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "training_data" / "annotations").mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    assert main(["data", "convert", "--oxford-hand", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "needs scipy: pip install 'yoloslim[data]'" in capsys.readouterr().err
    assert main(["data", "convert", "--oxford-hand", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2


# ---- VOC quirks ----------------------------------------------------------------------------------

def test_voc_float_coordinates_empty_tags_and_ids_in_two_splits(tmp_path: Path) -> None:
    root = synthesize(tmp_path / "voc", fmt="voc", images=6, imgsz=80, seed=5, progress=False)
    xml = root / "Annotations" / "000001.xml"
    text = xml.read_text()
    text = text.replace("<difficult>0</difficult>", "<difficult/>", 1).replace("<truncated>0</truncated>",
                                                                               "<truncated />", 1)
    text = text.replace("<xmin>", "<xmin>  ", 1)
    first_min = text.split("<xmin>")[1].split("</xmin>")[0]
    text = text.replace(f"<xmin>{first_min}</xmin>", f"<xmin>{float(first_min) + 0.5}</xmin>", 1)
    text = text.replace("<width>80</width>", "<width>80.0</width>")
    xml.write_text(text)
    sets = root / "ImageSets" / "Main"
    (sets / "train.txt").write_text((sets / "train.txt").read_text() + "000005\n000000\n")  # 000005 is in val
    src = load_voc(root)
    train = [s.path.stem for s in src.splits["train"]]
    val = [s.path.stem for s in src.splits["val"]]
    assert val == ["000005"] and train == ["000000", "000001", "000002", "000003", "000004"]
    s = src.splits["train"][1]
    _, boxes, _ = render_image(5, 1, 80)
    assert s.boxes[0, 0] == pytest.approx(boxes[0, 0] + 0.5) and not s.difficult.any()
    msgs = " | ".join(str(p) for p in src.problems)
    assert "train.txt: 1 id(s) also in another split, kept there only: 000005 (val)" in msgs
    assert "1 id(s) listed twice" in msgs
    assert all(not p.skipped for p in src.problems)


def test_cli_synth_formats_are_synth_formats() -> None:
    assert SYNTH_FORMATS == FORMATS
