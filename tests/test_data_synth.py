"""The synthetic data set: deterministic, balanced, boxes of the promised sizes, both formats."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import yaml

from yoloslim.data.synth import CLASSES, MAX_SIDE, MIN_SIDE, render_image, synthesize


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "data.yaml"}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "a", images=6, imgsz=64, seed=3, progress=False).parent
    b = synthesize(tmp_path / "b", images=6, imgsz=64, seed=3, progress=False).parent
    c = synthesize(tmp_path / "c", images=6, imgsz=64, seed=4, progress=False).parent
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert len(da) == 12 and da == db
    assert sum(da[k] != dc[k] for k in da) >= 6


def test_classes_balanced_and_box_sizes_in_range() -> None:
    counts = np.zeros(len(CLASSES), int)
    sides = []
    for i in range(100):
        img, boxes, classes = render_image(7, i, 128)
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        assert len(boxes) == len(classes) >= 1
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 128).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        counts += np.bincount(classes, minlength=len(CLASSES))
        sides.extend(((boxes[:, 2:] - boxes[:, :2]).max(1) / 128).tolist())
    assert len(CLASSES) >= 6
    assert counts.min() >= 0.5 * counts.max(), counts
    sides = np.array(sides)
    # visible extents: occlusion may shrink a box, never grow it beyond the drawn size (+1 px of rounding)
    assert sides.max() <= MAX_SIDE + 1 / 128 and sides.min() >= MIN_SIDE / 2.5
    assert sides.min() < 0.1 and sides.max() > 0.4


def test_yolo_layout(tmp_path: Path) -> None:
    data = synthesize(tmp_path, images=10, imgsz=64, seed=0, val_ratio=0.3, progress=False)
    cfg = yaml.safe_load(data.read_text())
    assert cfg["names"] == list(CLASSES) and cfg["nc"] == len(CLASSES)
    assert "path" not in cfg  # the folder of data.yaml: a copied folder reads its own files
    assert len(list((tmp_path / "images" / "train").glob("*.jpg"))) == 7
    assert len(list((tmp_path / "labels" / "val").glob("*.txt"))) == 3
    rows = np.loadtxt(tmp_path / "labels" / "train" / "000000.txt", ndmin=2)
    assert rows.shape[1] == 5 and (rows[:, 1:] >= 0).all() and (rows[:, 1:] <= 1).all()


def test_voc_layout(tmp_path: Path) -> None:
    root = synthesize(tmp_path, fmt="voc", images=5, imgsz=64, seed=0, progress=False)
    assert len(list((root / "JPEGImages").glob("*.jpg"))) == 5
    assert len(list((root / "Annotations").glob("*.xml"))) == 5
    assert (root / "ImageSets" / "Main" / "train.txt").read_text().split() == [f"{i:06d}" for i in range(4)]
    assert (root / "classes.txt").read_text().split() == list(CLASSES)
