"""Every bad input of the data layer: reported file by file, skipped with one warning, never a crash."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from yoloslim.cli import main
from yoloslim.data.check import check_data, format_report
from yoloslim.data.dataset import DetectionDataset, create_loader, load_data
from yoloslim.data.source import Sample
from yoloslim.data.synth import synthesize
from yoloslim.data.voc import write_voc_xml
from yoloslim.log import logger


@pytest.fixture
def warnings_log():
    records: list[str] = []
    sink = logger.add(lambda m: records.append(str(m)), level="WARNING", format="{message}")
    yield records
    logger.remove(sink)


def _img(path: Path, w: int = 64, h: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(path.suffix.lower() if path.suffix.lower() != ".jpeg" else ".jpg", img)
    path.write_bytes(buf.tobytes())
    return path


@pytest.fixture
def bad_yolo(tiny_data: Path, tmp_path: Path) -> Path:
    """tiny_data plus one of each bad (and odd but fine) YOLO input in its train split."""
    root = tmp_path / "bad"
    shutil.copytree(tiny_data.parent, root)
    (root / "data.yaml").write_text(tiny_data.read_text().replace(str(tiny_data.parent.resolve()), str(root)))
    im, lb = root / "images" / "train", root / "labels" / "train"
    good = "1 0.5 0.5 0.2 0.2\n"
    (im / "corrupt.jpg").write_bytes(b"this is not an image at all" * 10)
    (lb / "corrupt.txt").write_text(good)
    data = (im / "000000.jpg").read_bytes()
    (im / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (lb / "truncated.txt").write_text(good)
    _img(im / "columns.jpg")
    (lb / "columns.txt").write_text("1 0.5 0.5 0.2\n")
    _img(im / "badclass.jpg")
    (lb / "badclass.txt").write_text("99 0.5 0.5 0.2 0.2\n")
    _img(im / "notnumber.jpg")
    (lb / "notnumber.txt").write_text("1 0.5 abc 0.2 0.2\n")
    _img(im / "outside.jpg")
    (lb / "outside.txt").write_text("2 0.95 0.5 0.3 0.2\n3 0.5 0.5 0.2 0.2\n")
    _img(im / "zero.jpg")
    (lb / "zero.txt").write_text("2 0.5 0.5 0.0 0.2\n3 0.5 0.5 0.2 0.2\n")
    _img(im / "empty.jpg")
    (lb / "empty.txt").write_text("")
    _img(im / "UPPER.JPG")
    (lb / "UPPER.txt").write_text(good)
    _img(im / "image.png")
    (lb / "image.txt").write_text(good)
    _img(im / "image2.bmp")
    (lb / "image2.txt").write_text(good)
    return root / "data.yaml"


SKIPPED = {"corrupt.jpg", "truncated.jpg", "columns.txt", "badclass.txt", "notnumber.txt"}


def test_yolo_reader_skips_bad_samples_with_one_warning(bad_yolo: Path, warnings_log: list[str]) -> None:
    src = load_data(bad_yolo)
    names = {s.path.name: s for s in src.splits["train"]}
    assert len(src.splits["train"]) == 16 + 6
    assert not SKIPPED & set(names)
    assert {"UPPER.JPG", "image.png", "image2.bmp", "empty.jpg"} <= set(names)
    assert len(names["empty.jpg"].classes) == 0 and src.backgrounds["train"] == 1
    assert names["outside.jpg"].boxes[0, 2] == 64 and names["outside.jpg"].boxes[0, 0] == pytest.approx(51.2)
    assert names["zero.jpg"].classes.tolist() == [3]
    assert (names["image2.bmp"].width, names["image2.bmp"].height) == (64, 48)
    skipped = {p.path.name for p in src.problems if p.skipped}
    assert skipped == SKIPPED
    fixed = {p.path.name: p.message for p in src.problems if not p.skipped}
    assert "clipped" in fixed["outside.txt"] and "zero area" in fixed["zero.txt"]
    assert len(warnings_log) == 1
    assert "7 problem(s), 5 sample(s) skipped" in warnings_log[0]
    for name in SKIPPED:
        assert name in warnings_log[0]


def test_loader_runs_over_bad_data(bad_yolo: Path) -> None:
    src = load_data(bad_yolo, warn=False)
    ds = DetectionDataset(src.splits["train"], 64, seed=0)
    n = sum(len(b[2]) for b in create_loader(ds, 8, shuffle=False, workers=0))
    assert n == 22


def test_dataset_skips_bad_images_given_directly(bad_yolo: Path, warnings_log: list[str]) -> None:
    im = bad_yolo.parent / "images" / "train"
    samples = [Sample.make(im / n, [[1, 1, 9, 9]], [0], 96, 96) for n in ("corrupt.jpg", "truncated.jpg",
                                                                         "000001.jpg", "gone.jpg")]
    ds = DetectionDataset(samples, 64)
    assert len(ds) == 1 and ds[0][0].shape == (3, 64, 64)
    assert len(warnings_log) == 1 and "skipping 3 of 4 samples" in warnings_log[0]
    assert "truncated.jpg: truncated JPEG" in warnings_log[0]
    assert "gone.jpg: image file missing" in warnings_log[0]


def test_check_names_every_bad_file(bad_yolo: Path, capsys: pytest.CaptureFixture) -> None:
    report = check_data(bad_yolo, progress=False)
    text = format_report(report)
    assert not report.ok
    for name in [*SKIPPED, "outside.txt", "zero.txt"]:
        assert name in text
    assert "empty.txt" not in text and "UPPER" not in text
    assert report.backgrounds["train"] == 1 and report.images["train"] == 22
    assert main(["data", "check", "--data", str(bad_yolo)]) == 1
    out = capsys.readouterr().out
    assert "7 problem(s) in 7 file(s), 5 sample(s) skipped" in out


@pytest.fixture
def bad_voc(tmp_path: Path) -> Path:
    root = synthesize(tmp_path / "voc", fmt="voc", images=6, imgsz=64, seed=2, progress=False)
    ann, jpg = root / "Annotations", root / "JPEGImages"
    box = np.array([[4, 4, 30, 30]])
    (ann / "broken.xml").write_text("<annotation><filename>broken.jpg</filename><object>")
    _img(jpg / "broken.jpg")
    write_voc_xml(ann / "noimage.xml", "noimage.jpg", 64, 48, ["circle"], box)
    _img(jpg / "nosize.jpg")
    (ann / "nosize.xml").write_text("<annotation><filename>nosize.jpg</filename><object><name>circle</name>"
                                    "<bndbox><xmin>5</xmin><ymin>5</ymin><xmax>20</xmax><ymax>20</ymax>"
                                    "</bndbox></object></annotation>")
    _img(jpg / "nobox.jpg")
    (ann / "nobox.xml").write_text("<annotation><filename>nobox.jpg</filename><size><width>64</width>"
                                   "<height>48</height></size><object><name>circle</name></object></annotation>")
    _img(jpg / "UPPER.PNG")
    write_voc_xml(ann / "UPPER.xml", "UPPER.PNG", 64, 48, ["dog", "ring", "ring"],
                  np.array([[4, 4, 30, 30], [40, 10, 90, 30], [10, 10, 10, 30]]))
    _img(jpg / "CAPS.JPG")  # the annotation says caps.jpg
    write_voc_xml(ann / "caps.xml", "caps.jpg", 64, 48, ["square"], box)
    (jpg / "cut.jpg").write_bytes(_img(jpg / "cut.jpg").read_bytes()[:200])
    write_voc_xml(ann / "cut.xml", "cut.jpg", 64, 48, ["circle"], box)
    shutil.rmtree(root / "ImageSets")
    return root


def test_voc_bad_inputs(bad_voc: Path, warnings_log: list[str]) -> None:
    src = load_data(bad_voc)
    samples = {s.path.name: s for split in src.splits.values() for s in split}
    assert len(samples) == 6 + 4
    assert samples["CAPS.JPG"].classes.tolist() == [1]
    assert samples["nosize.jpg"].width == 64 and samples["nobox.jpg"].classes.tolist() == []
    up = samples["UPPER.PNG"]
    assert up.classes.tolist() == [5] and np.allclose(up.boxes, [[40, 10, 64, 30]])
    msgs = {(p.path.name, p.skipped): p.message for p in src.problems}
    assert "does not parse" in msgs[("broken.xml", True)]
    assert "not found" in msgs[("noimage.xml", True)]
    assert "truncated" in msgs[("cut.jpg", True)]
    assert "<size>" in msgs[("nosize.xml", False)] and "bndbox" in msgs[("nobox.xml", False)]
    upper = [p.message for p in src.problems if p.path.name == "UPPER.xml"]
    assert any("dog" in m for m in upper) and any("clipped" in m for m in upper)
    assert any("zero area" in m for m in upper)
    assert len(warnings_log) == 1 and "broken.xml" in warnings_log[0]
    assert main(["data", "check", "--data", str(bad_voc)]) == 1


def test_cli_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "check", "--data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nope" in err[0]
    (tmp_path / "d.yaml").write_text("train: images/train\nnames: [a]\n")
    assert main(["data", "check", "--data", str(tmp_path / "d.yaml")]) == 2
    assert "missing key 'val'" in capsys.readouterr().err
    assert main(["data", "convert", "--voc", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a VOC data set" in capsys.readouterr().err
