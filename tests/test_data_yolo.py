"""The YOLO txt reader and data.yaml parsing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from yoloslim.data.dataset import load_data
from yoloslim.data.synth import CLASSES
from yoloslim.data.yolo import label_path, load_yolo
from yoloslim.errors import UserError


def _copy(tiny_data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(tiny_data.parent, root)
    return root


def _write_yaml(root: Path, **cfg) -> Path:
    p = root / "custom.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_reads_tiny_data(tiny_data: Path) -> None:
    src = load_data(tiny_data)
    assert src.fmt == "yolo" and src.names == list(CLASSES)
    assert {k: len(v) for k, v in src.splits.items()} == {"train": 16, "val": 8}
    assert src.problems == []
    s = src.splits["train"][0]
    assert s.width == 96 and s.height == 96 and s.boxes.dtype == np.float32 and s.classes.dtype == np.int64
    assert len(s.boxes) == len(s.classes) == len(s.difficult) >= 1 and not s.difficult.any()
    rows = np.loadtxt(label_path(s.path), ndmin=2)
    assert np.allclose(s.boxes[:, 0], (rows[:, 1] - rows[:, 3] / 2) * 96, atol=1e-3)
    assert load_data(tiny_data.parent).names == src.names  # the folder holding data.yaml works too


def test_label_path_rule() -> None:
    assert label_path(Path("/d/images/train/a.JPG")) == Path("/d/labels/train/a.txt")
    assert label_path(Path("/images/x/images/b.png")) == Path("/images/x/labels/b.txt")
    assert label_path(Path("/d/pics/c.bmp")) == Path("/d/pics/c.txt")


def test_names_dict_relative_path_lists_and_txt(tiny_data: Path, tmp_path: Path) -> None:
    root = _copy(tiny_data, tmp_path)
    imgs = sorted((root / "images" / "val").glob("*.jpg"))
    (root / "val.txt").write_text("\n".join(f"./images/val/{p.name}" for p in imgs[:5]) + "\n")
    names = {i: n for i, n in enumerate(CLASSES)}
    p = _write_yaml(root, path=".", train=["images/train", "images/val"], val="val.txt", test=str(imgs[0]),
                    names=names, nc=len(CLASSES))
    src = load_yolo(p)
    assert src.root == root.resolve() and src.names == list(CLASSES)
    assert len(src.splits["train"]) == 24 and len(src.splits["val"]) == 5 and len(src.splits["test"]) == 1


def test_missing_label_file_is_background(tiny_data: Path, tmp_path: Path) -> None:
    root = _copy(tiny_data, tmp_path)
    (root / "labels" / "train" / "000000.txt").unlink()
    (root / "labels" / "train" / "000001.txt").write_text("")
    src = load_yolo(_write_yaml(root, train="images/train", val="images/val", names=list(CLASSES)))
    assert len(src.splits["train"]) == 16 and src.backgrounds["train"] == 2 and src.problems == []


@pytest.mark.parametrize("cfg, message", [
    ({"val": "images/val", "names": ["a"]}, "missing key 'train'"),
    ({"train": "images/train", "names": ["a"]}, "missing key 'val'"),
    ({"train": "images/train", "val": "images/val"}, "missing key 'names'"),
    ({"train": "images/train", "val": "images/val", "names": ["a", "b"], "nc": 3}, "nc is 3"),
    ({"train": "images/nope", "val": "images/val", "names": ["a"]}, "does not exist"),
    ({"path": "/no/such", "train": "images/train", "val": "images/val", "names": ["a"]}, "does not exist"),
    ({"train": "images/train", "val": "images/val", "names": {0: "a", 2: "b"}}, "without gaps"),
])
def test_bad_yaml(tiny_data: Path, tmp_path: Path, cfg: dict, message: str) -> None:
    root = _copy(tiny_data, tmp_path)
    with pytest.raises(UserError, match=message):
        load_yolo(_write_yaml(root, **cfg))


def test_nc_without_names_and_not_yaml(tiny_data: Path, tmp_path: Path) -> None:
    root = _copy(tiny_data, tmp_path)
    src = load_yolo(_write_yaml(root, train="images/train", val="images/val", nc=8))
    assert src.names[0] == "class0" and len(src.names) == 8
    bad = tmp_path / "list.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(UserError, match="expected a mapping"):
        load_yolo(bad)
    with pytest.raises(UserError, match="no such file"):
        load_data(tmp_path / "missing.yaml")
