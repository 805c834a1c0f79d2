"""The detection confusion matrix (YOLOv5's rules), with a background row and column.

Per image, detections above a confidence are matched to ground truths regardless of class: every
pair with IoU above a threshold is a candidate, taken greedily by IoU, each detection and each
ground truth at most once. A matched pair counts at (predicted class, true class); an unmatched
ground truth at (background, true class) (missed); an unmatched detection at (predicted class,
background) (a false alarm). Ignored ground truths (VOC ``difficult``) are left out, and so are the
detections that lie on one.
"""

from __future__ import annotations

import numpy as np

CONF = 0.25  # YOLOv5's confusion-matrix thresholds
IOU = 0.45


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 4) x (m, 4) corner boxes -> (n, m) IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


class ConfusionMatrix:
    """Counts ``matrix[predicted, true]`` over images; index ``nc`` is the background.

    Args:
        nc: number of classes.
        conf: detections below this confidence are not counted.
        iou: a detection and a ground truth match above this IoU.
    """

    def __init__(self, nc: int, conf: float = CONF, iou: float = IOU) -> None:
        self.nc, self.conf, self.iou = nc, conf, iou
        self.matrix = np.zeros((nc + 1, nc + 1), dtype=np.int64)

    def add(self, gt_boxes: np.ndarray, gt_classes: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray,
            det_classes: np.ndarray, gt_ignore: np.ndarray | None = None) -> None:
        """One image: corner boxes in the same pixels, class ids."""
        gt_boxes, det_boxes = np.asarray(gt_boxes, float).reshape(-1, 4), np.asarray(det_boxes, float).reshape(-1, 4)
        gt_classes, det_classes = np.asarray(gt_classes, int).reshape(-1), np.asarray(det_classes, int).reshape(-1)
        keep = np.asarray(det_scores, float).reshape(-1) >= self.conf
        det_boxes, det_classes = det_boxes[keep], det_classes[keep]
        if gt_ignore is not None and np.any(gt_ignore):
            ign = np.asarray(gt_ignore, bool).reshape(-1)
            if len(det_boxes):  # detections on an ignored object are neither right nor wrong
                on_ignored = (box_iou(det_boxes, gt_boxes[ign]) > self.iou).any(1)
                det_boxes, det_classes = det_boxes[~on_ignored], det_classes[~on_ignored]
            gt_boxes, gt_classes = gt_boxes[~ign], gt_classes[~ign]
        det_of_gt = np.full(len(gt_boxes), -1)
        if len(gt_boxes) and len(det_boxes):
            iou = box_iou(det_boxes, gt_boxes)  # (d, g)
            d, g = np.nonzero(iou > self.iou)
            order = np.argsort(-iou[d, g], kind="stable")
            used_d: set[int] = set()
            for k in order:
                if d[k] not in used_d and det_of_gt[g[k]] < 0:
                    used_d.add(int(d[k]))
                    det_of_gt[g[k]] = d[k]
        for gi, di in enumerate(det_of_gt):
            self.matrix[det_classes[di] if di >= 0 else self.nc, gt_classes[gi]] += 1
        matched = set(det_of_gt[det_of_gt >= 0].tolist())
        for di, c in enumerate(det_classes):
            if di not in matched:
                self.matrix[c, self.nc] += 1
