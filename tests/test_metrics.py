"""COCO-exact metrics: equal to pycocotools on the saved files, and hand-checked cases."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from yoloslim.engine.coco_eval import coco_iou
from yoloslim.engine.metrics import DetectionMetrics

pycocotools = pytest.importorskip("pycocotools")


def _random_metrics(seed: int, n_img: int = 40, nc: int = 4) -> DetectionMetrics:
    """Random data with the awkward cases: score ties, crowd (ignored) boxes, duplicate boxes,
    empty images, more than 100 detections of a class in an image, a class without ground truth
    (the last) and a class without detections (the first after seed-dependent shuffling)."""
    rng = np.random.default_rng(seed)
    no_det = int(rng.integers(0, nc - 1))
    m = DetectionMetrics([f"class{k}" for k in range(nc)])
    for i in range(n_img):
        ng = 0 if i % 7 == 3 else int(rng.integers(1, 12))
        xy = rng.uniform(0, 300, (ng, 2))
        gb = np.concatenate((xy, xy + rng.uniform(4, 80, (ng, 2))), 1)
        if ng > 2:
            gb[1] = gb[0]  # two identical ground truths: IoU ties
        gc = rng.integers(0, nc - 1, ng)
        ign = rng.random(ng) < 0.2
        nd = 0 if i % 11 == 5 else int(rng.integers(0, 40 if i % 5 else 160))
        if ng:
            src = rng.integers(0, ng, nd)
            jitter = rng.normal(0, 4, (nd, 4)) * (rng.random((nd, 1)) < 0.8)
            db, dc = gb[src] + jitter, np.where(rng.random(nd) < 0.85, gc[src], rng.integers(0, nc, nd))
        else:
            xy = rng.uniform(0, 300, (nd, 2))
            db, dc = np.concatenate((xy, xy + 25), 1), rng.integers(0, nc, nd)
        dc = np.where(dc == no_det, (no_det + 1) % nc, dc)
        scores = (np.round(rng.random(nd) * 20) / 20).astype(np.float32)  # many ties
        m.add(1000 - 3 * i, gb, gc, ign, db, scores, dc, width=400, height=400)
    return m


def _pycocotools_stats(pred: Path, gt: Path) -> tuple[np.ndarray, np.ndarray]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt))
        ev = COCOeval(coco_gt, coco_gt.loadRes(str(pred)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats, ev.eval["precision"][:, :, :, 0, 2]  # area 'all', maxDets 100


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_map_equals_pycocotools(seed: int, tmp_path: Path) -> None:
    m = _random_metrics(seed)
    res = m.compute()
    stats, precision = _pycocotools_stats(*m.write_coco(tmp_path))
    assert abs(res.map - stats[0]) < 1e-4 and abs(res.map50 - stats[1]) < 1e-4
    np.testing.assert_allclose(m.evaluate().precision, precision, atol=1e-12, rtol=0)
    assert 0.05 < res.map < res.map50 < 1
    assert res.per_class["class3"]["ap"] is None  # no ground truth: left out, as COCO does
    assert sum(1 for v in res.per_class.values() if v["ap"] == 0.0) == 1  # the class without detections


def test_perfect_detections() -> None:
    m = DetectionMetrics(["a", "b"])
    for i in range(5):
        gt = np.array([[10, 10, 50, 60], [70, 20, 90, 90]], dtype=np.float32) + i
        m.add(i, gt, [0, 1], None, gt, [0.9, 0.8], [0, 1])
    r = m.compute()
    assert r.map == r.map50 == r.precision == r.recall == 1.0
    assert r.per_class["a"] == {"ap50": 1.0, "ap": 1.0, "p": 1.0, "r": 1.0, "n_gt": 5, "n_img": 5}
    assert r.images == 5 and r.instances == 10


def test_hand_cases() -> None:
    gt = np.array([[0, 0, 100, 100]])
    far = np.array([[200, 200, 300, 300]])
    # a false positive ranked above the true positive: precision 1/2 at every recall
    m = DetectionMetrics(["a"])
    m.add(0, gt, [0], None, np.concatenate((far, gt)), [0.9, 0.8], [0, 0])
    assert m.compute().map50 == pytest.approx(0.5)
    # ranked below: no effect on AP
    m = DetectionMetrics(["a"])
    m.add(0, gt, [0], None, np.concatenate((gt, far)), [0.9, 0.8], [0, 0])
    assert m.compute().map50 == pytest.approx(1.0)
    # IoU 0.64 (box shifted by 20 %): a hit at .50-.60, a miss above -> AP .5:.95 = 3/10
    m = DetectionMetrics(["a"])
    m.add(0, gt, [0], None, [[0, 0, 100, 64]], [0.9], [0])
    r = m.compute()
    assert r.map50 == pytest.approx(1.0) and r.map == pytest.approx(0.3)
    # a detection on an ignored (difficult) box is neither a TP nor an FP; it may hit it many times
    m = DetectionMetrics(["a"])
    m.add(0, np.concatenate((gt, far)), [0, 0], [False, True], np.concatenate((far, far, gt)),
          [0.95, 0.9, 0.5], [0, 0, 0])
    r = m.compute()
    assert r.map == pytest.approx(1.0) and r.instances == 1
    # a missed ground truth in another image: recall 1/2, precision 1 up to it (51 of 101 points)
    m.add(1, gt, [0], None, None, None, None)
    assert m.compute().map == pytest.approx(51 / 101)


def test_crowd_iou_is_over_detection_area() -> None:
    dt = np.array([[10.0, 10.0, 20.0, 20.0]])  # x, y, w, h
    gt = np.array([[[0.0, 0.0, 100.0, 100.0]]])
    assert coco_iou(dt, gt, np.array([[True]]))[0, 0] == 1.0
    assert coco_iou(dt, gt, np.array([[False]]))[0, 0] == pytest.approx(400 / 10000)


def test_write_coco_files(tmp_path: Path) -> None:
    m = DetectionMetrics(["cat", "dog"])
    m.add(3, [[1, 2, 11, 22]], [1], [True], [[1, 2, 11, 20]], [0.5], [1], width=40, height=30)
    m.add(1, None, None, None, None, None, None, width=40, height=30)
    pred, gt = m.write_coco(tmp_path / "coco", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    g, p = json.loads(gt.read_text()), json.loads(pred.read_text())
    assert [im["id"] for im in g["images"]] == [1, 3] and g["images"][1]["file_name"] == "d.jpg"
    assert g["annotations"] == [{"id": 1, "image_id": 3, "category_id": 1, "bbox": [1.0, 2.0, 10.0, 20.0],
                                 "area": 200.0, "iscrowd": 1}]
    assert g["categories"] == [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]
    assert p == [{"image_id": 3, "category_id": 1, "bbox": [1.0, 2.0, 10.0, 18.0], "score": 0.5}]


def test_bad_inputs() -> None:
    m = DetectionMetrics(["a"])
    with pytest.raises(ValueError, match="class ids"):
        m.add(0, [[0, 0, 1, 1]], [1])
    with pytest.raises(ValueError, match="shape"):
        m.add(0, [[0, 0, 1]], [0])
    with pytest.raises(ValueError, match="length"):
        m.add(0, [[0, 0, 1, 1]], [0], None, [[0, 0, 1, 1]], [0.5, 0.4], [0])
    m.add(0, [[0, 0, 1, 1]], [0])
    with pytest.raises(ValueError, match="twice"):
        m.add(0, [[0, 0, 1, 1]], [0])
    empty = DetectionMetrics(["a"]).compute()
    assert empty.map == empty.map50 == 0.0 and empty.per_class["a"]["ap"] is None
