"""Detection metrics: COCO mAP@.5 and mAP@.5:.95, P and R at the best F1, per class.

:class:`DetectionMetrics` collects, image by image, the ground truth and the detections (numpy,
original-image pixels, corner boxes) and computes the metrics with :mod:`yoloslim.engine.coco_eval`,
which follows pycocotools' rules exactly. :meth:`DetectionMetrics.write_coco` writes the same data
as COCO files, so that anyone can re-score them with pycocotools and get the same mAP.

Ignored ground truths (VOC ``difficult``) are COCO crowd regions (``iscrowd=1``): a detection on
one is neither a true nor a false positive.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from yoloslim.engine.coco_eval import MAX_DETS, RECALL_THRESHOLDS, CocoEvalResult, evaluate_coco
from yoloslim.models.io import atomic_write

EPS = 1e-16


@dataclass
class MetricsResult:
    """Summary of an evaluation.

    Attributes:
        map50: COCO AP at IoU .5, mean over classes with ground truth.
        map: COCO AP at IoU .5:.05:.95, mean over classes with ground truth.
        precision, recall: mean over classes with ground truth, at the confidence that maximises
            the mean F1 (YOLOv5's rule).
        per_class: class name -> ``{"ap50", "ap", "p", "r", "n_gt", "n_img"}``; the metrics are
            None for a class without (non-ignored) ground truth.
        images: images evaluated.
        instances: non-ignored ground-truth boxes.
        conf: the confidence at which ``precision`` and ``recall`` are taken.
    """

    map50: float
    map: float
    precision: float
    recall: float
    per_class: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: int = 0
    instances: int = 0
    conf: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MetricCurves:
    """The curves the PR and F1 plots draw, per class (K classes).

    Attributes:
        names: class names.
        valid: (K,) classes with ground truth (the others are left out of the means).
        recall_points: (101,) COCO's recall points 0, .01, ..., 1.
        pr_precision: (K, 101) interpolated precision at IoU .5 at each recall point (COCO's; its
            mean over the points is the class's AP@.5).
        conf: (P,) confidence grid 0..1.
        precision, recall, f1: (K, P) at IoU .5 against the confidence (YOLOv5's curves, from which
            P and R at the best mean F1 are taken).
    """

    names: list[str]
    valid: np.ndarray
    recall_points: np.ndarray
    pr_precision: np.ndarray
    conf: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray


@dataclass
class _Image:
    gt_box: np.ndarray  # (n, 4) float64 x, y, w, h
    gt_cls: np.ndarray  # (n,) int64
    gt_ignore: np.ndarray  # (n,) bool
    det_box: np.ndarray  # (m, 4) float64 x, y, w, h
    det_score: np.ndarray  # (m,) float64
    det_cls: np.ndarray  # (m,) int64
    width: int
    height: int


class DetectionMetrics:
    """Accumulates ground truth and detections image by image; computes COCO-exact metrics.

    Args:
        names: class names; class ids are indices into it.
        max_dets: detections per image and class that count (COCO: 100).
    """

    def __init__(self, names: Sequence[str], max_dets: int = MAX_DETS) -> None:
        self.names = list(names)
        self.max_dets = max_dets
        self._images: dict[int, _Image] = {}
        self._last: CocoEvalResult | None = None  # the evaluation compute() made, for curves()

    def __len__(self) -> int:
        return len(self._images)

    def __contains__(self, image_id: int) -> bool:
        return int(image_id) in self._images

    def add(self, image_id: int, gt_boxes: Any, gt_classes: Any, gt_ignore: Any = None, det_boxes: Any = None,
            det_scores: Any = None, det_classes: Any = None, *, width: int = 0, height: int = 0) -> None:
        """Record one image.

        Args:
            image_id: a unique integer id (the COCO image id).
            gt_boxes: (n, 4) x1, y1, x2, y2 in original-image pixels.
            gt_classes: (n,) class ids.
            gt_ignore: (n,) bool, ground truths to ignore (VOC difficult); None: none.
            det_boxes: (m, 4) x1, y1, x2, y2 in original-image pixels; None: no detections.
            det_scores: (m,) confidences.
            det_classes: (m,) class ids.
            width, height: the image size, written into the COCO ground truth.
        """
        image_id = int(image_id)
        if image_id in self._images:
            raise ValueError(f"image id {image_id} was added twice")
        gt_xywh, gt_cls = _boxes(gt_boxes, "gt_boxes"), _classes(gt_classes, "gt_classes", len(self.names))
        ign = np.zeros(len(gt_cls), bool) if gt_ignore is None else np.asarray(gt_ignore, bool).reshape(-1)
        dt_xywh = _boxes(det_boxes, "det_boxes")
        dt_cls = _classes(det_classes, "det_classes", len(self.names))
        score = np.zeros(0) if det_scores is None else np.asarray(det_scores, dtype=np.float64).reshape(-1)
        if not (len(gt_xywh) == len(gt_cls) == len(ign)):
            raise ValueError(f"gt_boxes, gt_classes and gt_ignore differ in length: "
                             f"{len(gt_xywh)}, {len(gt_cls)}, {len(ign)}")
        if not (len(dt_xywh) == len(dt_cls) == len(score)):
            raise ValueError(f"det_boxes, det_classes and det_scores differ in length: "
                             f"{len(dt_xywh)}, {len(dt_cls)}, {len(score)}")
        self._images[image_id] = _Image(gt_xywh, gt_cls, ign, dt_xywh, score, dt_cls, int(width), int(height))
        self._last = None

    def evaluate(self) -> CocoEvalResult:
        """The raw COCO evaluation (precision array, matches) of what was added."""
        ids = sorted(self._images)
        imgs = [self._images[i] for i in ids]

        def cat(attr: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
            parts = [getattr(im, attr) for im in imgs]
            return np.concatenate(parts) if parts else np.zeros(shape, dtype)

        pos = np.arange(len(ids))
        gt_img = np.repeat(pos, [len(im.gt_cls) for im in imgs]) if imgs else np.zeros(0, np.int64)
        dt_img = np.repeat(pos, [len(im.det_cls) for im in imgs]) if imgs else np.zeros(0, np.int64)
        return evaluate_coco(
            len(self.names), gt_img, cat("gt_cls", (0,), np.int64), cat("gt_box", (0, 4), np.float64),
            cat("gt_ignore", (0,), bool), dt_img, cat("det_cls", (0,), np.int64),
            cat("det_box", (0, 4), np.float64), cat("det_score", (0,), np.float64), max_dets=self.max_dets)

    def compute(self) -> MetricsResult:
        """mAP@.5, mAP@.5:.95 (pycocotools' numbers), P and R at the best mean F1, per class."""
        ev = self._last = self.evaluate()
        ap50 = ev.precision[0].mean(0)  # (K,)
        ap = ev.precision.mean((0, 1))  # (K,)
        p, r, conf = _pr_at_best_f1(ev)
        valid = ev.valid
        per_class = {}
        for k, name in enumerate(self.names):
            ok = bool(valid[k])
            per_class[name] = {
                "ap50": float(ap50[k]) if ok else None, "ap": float(ap[k]) if ok else None,
                "p": float(p[k]) if ok else None, "r": float(r[k]) if ok else None,
                "n_gt": int(ev.n_gt[k]), "n_img": int(ev.n_img[k]),
            }
        return MetricsResult(
            map50=ev.map(0), map=ev.map(), precision=float(p[valid].mean()) if valid.any() else 0.0,
            recall=float(r[valid].mean()) if valid.any() else 0.0, per_class=per_class,
            images=len(self._images), instances=int(ev.n_gt.sum()), conf=conf)

    def curves(self) -> MetricCurves:
        """The curves behind :meth:`compute`'s numbers (PR at IoU .5; P, R, F1 against confidence)."""
        ev = self._last if self._last is not None else self.evaluate()
        self._last = ev
        conf, p, r = _conf_curves(ev)
        return MetricCurves(names=list(self.names), valid=ev.valid.copy(), recall_points=RECALL_THRESHOLDS.copy(),
                            pr_precision=ev.precision[0].T.copy(), conf=conf, precision=p, recall=r,
                            f1=2 * p * r / (p + r + EPS))

    def images(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Per image id, what was added: ``(gt_boxes, gt_classes, gt_ignore, det_boxes, det_scores,
        det_classes)``, boxes as ``x1, y1, x2, y2`` original pixels (float64)."""
        def corners(b: np.ndarray) -> np.ndarray:
            return np.concatenate((b[:, :2], b[:, :2] + b[:, 2:]), 1)

        return {i: (corners(im.gt_box), im.gt_cls, im.gt_ignore, corners(im.det_box), im.det_score, im.det_cls)
                for i, im in sorted(self._images.items())}

    def write_coco(self, out_dir: str | Path, image_names: Sequence[str] | Mapping[int, str] | None = None,
                   ) -> tuple[Path, Path]:
        """Write ``predictions.json`` and ``ground_truth.json`` (COCO format) into ``out_dir``.

        Category ids are the class ids (0-based, the order of ``names``); annotation ids start
        at 1; boxes are ``[x, y, w, h]`` in original pixels at full float precision; ignored
        ground truths have ``iscrowd`` 1. Scoring these files with pycocotools gives the same
        mAP as :meth:`compute`.

        Args:
            out_dir: folder to write into (created).
            image_names: file name per image id (indexable by the id); default: the id.

        Returns:
            (predictions.json, ground_truth.json) paths.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        images, anns, preds = [], [], []
        for i in sorted(self._images):
            im = self._images[i]
            name = str(image_names[i]) if image_names is not None else str(i)
            images.append({"id": i, "file_name": name, "width": im.width, "height": im.height})
            for box, c, ig in zip(im.gt_box.tolist(), im.gt_cls.tolist(), im.gt_ignore.tolist(), strict=True):
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": box,
                             "area": box[2] * box[3], "iscrowd": int(ig)})
            dets = zip(im.det_box.tolist(), im.det_cls.tolist(), im.det_score.tolist(), strict=True)
            for box, c, s in dets:
                preds.append({"image_id": i, "category_id": c, "bbox": box, "score": s})
        gt = {"images": images, "annotations": anns,
              "categories": [{"id": k, "name": n} for k, n in enumerate(self.names)]}
        pred_path, gt_path = out / "predictions.json", out / "ground_truth.json"
        atomic_write(pred_path, lambda tmp: Path(tmp).write_text(json.dumps(preds)))
        atomic_write(gt_path, lambda tmp: Path(tmp).write_text(json.dumps(gt)))
        return pred_path, gt_path


def _boxes(boxes: Any, what: str) -> np.ndarray:
    """(n, 4) corner boxes to float64 x, y, w, h (the numbers the COCO files hold)."""
    if boxes is None:
        return np.zeros((0, 4))
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{what} must have shape (n, 4), got {b.shape}")
    return np.concatenate((b[:, :2], b[:, 2:] - b[:, :2]), 1)


def _classes(classes: Any, what: str, nc: int) -> np.ndarray:
    if classes is None:
        return np.zeros(0, np.int64)
    c = np.asarray(classes).reshape(-1)
    if c.size and (not np.all(c == np.round(c)) or c.min() < 0 or c.max() >= nc):
        raise ValueError(f"{what} must be integer class ids in 0..{nc - 1}, got {np.unique(c)[:10]}")
    return c.astype(np.int64)


def _pr_at_best_f1(ev: CocoEvalResult, points: int = 1000) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-class P and R at the confidence where the (smoothed) mean F1 over classes peaks.

    YOLOv5's ``ap_per_class`` rule, on the COCO matches at IoU .5 (detections on ignored ground
    truth left out): per class, precision and recall as functions of the confidence, sampled on a
    0..1 grid; F1 averaged over classes with ground truth, smoothed by a box filter of a tenth of
    the grid; P and R taken where it is highest.

    Returns:
        (K,) precision, (K,) recall, the confidence.
    """
    px, p, r = _conf_curves(ev, points)
    if not ev.valid.any():
        return p[:, 0], r[:, 0], 0.0
    f1 = 2 * p * r / (p + r + EPS)
    i = int(_smooth(f1[ev.valid].mean(0), 0.1).argmax())
    return p[:, i], r[:, i], float(px[i])


def _conf_curves(ev: CocoEvalResult, points: int = 1000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision and recall at IoU .5 against the confidence, sampled on a 0..1 grid.

    Returns:
        (points,) confidences, (K, points) precision, (K, points) recall.
    """
    nc = len(ev.n_gt)
    px = np.linspace(0, 1, points)
    p = np.zeros((nc, points))
    r = np.zeros((nc, points))
    keep = ~ev.det_ignored[:, 0]
    cls, score, tp = ev.det_cls[keep], ev.det_score[keep], ev.det_tp[keep, 0]
    bounds = np.searchsorted(cls, np.arange(nc + 1))
    for c in np.flatnonzero(ev.valid):
        lo, hi = bounds[c], bounds[c + 1]
        if hi == lo:
            continue
        tpc = np.cumsum(tp[lo:hi])
        fpc = np.cumsum(~tp[lo:hi])
        r[c] = np.interp(-px, -score[lo:hi], tpc / (ev.n_gt[c] + EPS), left=0)
        p[c] = np.interp(-px, -score[lo:hi], tpc / (tpc + fpc), left=1)
    return px, p, r


def _smooth(y: np.ndarray, frac: float) -> np.ndarray:
    """Box-filter ``y`` over a window of ``frac`` of its length, edges padded with the end values."""
    n = round(len(y) * frac * 2) // 2 + 1  # odd window
    padded = np.concatenate((np.full(n // 2, y[0]), y, np.full(n // 2, y[-1])))
    return np.convolve(padded, np.ones(n) / n, mode="valid")
