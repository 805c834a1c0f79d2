"""The VOC reader and the VOC -> YOLO converter (round trip within 1 px)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from yoloslim.data.convert import convert_voc
from yoloslim.data.dataset import load_data
from yoloslim.data.synth import CLASSES, render_image, synthesize
from yoloslim.data.voc import load_voc, split_ids, write_voc_xml
from yoloslim.errors import UserError


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("voc"), fmt="voc", images=10, imgsz=80, seed=1, progress=False)


def _copy(voc_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "VOC"
    shutil.copytree(voc_root, root)
    return root


def test_reads_voc_with_imagesets(voc_root: Path) -> None:
    src = load_data(voc_root)
    assert src.fmt == "voc" and src.names == list(CLASSES) and src.problems == []
    assert [len(src.splits[k]) for k in ("train", "val")] == [8, 2]
    s = src.splits["val"][1]
    assert s.path.name == "000009.jpg" and (s.width, s.height) == (80, 80)
    _, boxes, classes = render_image(1, 9, 80)
    assert np.array_equal(s.boxes, boxes) and np.array_equal(s.classes, classes)


def test_split_without_imagesets_is_seeded(voc_root: Path, tmp_path: Path) -> None:
    root = _copy(voc_root, tmp_path)
    shutil.rmtree(root / "ImageSets")
    (root / "classes.txt").unlink()
    a, b = load_voc(root), load_voc(root)
    assert [s.path for s in a.splits["val"]] == [s.path for s in b.splits["val"]]
    assert len(a.splits["val"]) == 2 and len(a.splits["train"]) == 8
    present = sorted({CLASSES[c] for split in a.splits.values() for s in split for c in s.classes})
    assert a.names == present  # names from the data, sorted
    other = load_voc(root, seed=1, val_ratio=0.5)
    assert len(other.splits["val"]) == 5
    assert split_ids([f"{i}" for i in range(10)], 0.3, 0) == split_ids([f"{i}" for i in range(10)], 0.3, 0)


def test_difficult_names_file_and_devkit(voc_root: Path, tmp_path: Path) -> None:
    devkit = tmp_path / "VOCdevkit"
    root = _copy(voc_root, devkit)
    second = devkit / "VOC2012"
    (second / "JPEGImages").mkdir(parents=True)
    shutil.copy(root / "JPEGImages" / "000000.jpg", second / "JPEGImages" / "2012_a.JPG")
    write_voc_xml(second / "Annotations" / "2012_a.xml", "2012_a.JPG", 80, 80, ["circle", "dog"],
                  np.array([[1, 2, 30, 40], [5, 5, 20, 20]]), difficult=[True, False])
    names = tmp_path / "names.txt"
    names.write_text("circle\nsquare\n")
    src = load_voc(devkit, names_file=names)
    assert src.names == ["circle", "square"]
    extra = [s for split in src.splits.values() for s in split if s.path.name == "2012_a.JPG"]
    assert len(extra) == 1 and extra[0].difficult.tolist() == [True]
    assert np.allclose(extra[0].boxes, [[1, 2, 30, 40]])
    assert any("dog" in p.message for p in src.problems)
    assert all(set(s.classes.tolist()) <= {0, 1} for split in src.splits.values() for s in split)


def test_convert_round_trip_within_one_pixel(voc_root: Path, tmp_path: Path) -> None:
    res = convert_voc(voc_root, tmp_path / "yolo", progress=False)
    assert res.images == {"train": 8, "val": 2} and res.problems == 0
    voc, yolo = load_data(voc_root), load_data(res.data_yaml)
    assert yolo.names == voc.names
    for split in ("train", "val"):
        a = {s.path.name: s for s in voc.splits[split]}
        b = {s.path.name: s for s in yolo.splits[split]}
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(a[k].classes, b[k].classes)
            assert np.abs(a[k].boxes - b[k].boxes).max(initial=0) <= 1.0
    with pytest.raises(UserError, match="not empty"):
        convert_voc(voc_root, tmp_path / "yolo", progress=False)


def test_convert_split_and_difficult(voc_root: Path, tmp_path: Path) -> None:
    root = _copy(voc_root, tmp_path)
    write_voc_xml(root / "Annotations" / "000000.xml", "000000.jpg", 80, 80, ["circle", "ring"],
                  np.array([[1, 2, 30, 40], [5, 5, 20, 20]]), difficult=[True, False])
    a = convert_voc(root, tmp_path / "a", val_ratio=0.3, seed=4, progress=False)
    b = convert_voc(root, tmp_path / "b", val_ratio=0.3, seed=4, keep_difficult=True, progress=False)
    assert a.images == b.images == {"train": 7, "val": 3}
    assert sorted(p.name for p in (tmp_path / "a/images/val").iterdir()) == \
        sorted(p.name for p in (tmp_path / "b/images/val").iterdir())
    assert a.difficult_dropped == 1 and b.difficult_dropped == 0
    assert sum(a.boxes.values()) + 1 == sum(b.boxes.values())
