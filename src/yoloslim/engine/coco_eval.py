"""COCO bbox evaluation (area 'all', 100 detections), vectorised with numpy.

This follows pycocotools' ``COCOeval`` rule for rule, so that the numbers are the same as
pycocotools gives on the files :meth:`DetectionMetrics.write_coco` writes:

- per (image, class), detections sorted by score with a stable sort (ties keep their order in
  the results file) and cut to the best 100; ground truths sorted so that non-ignored ones come
  first; a ground truth is ignored when it is a crowd (``iscrowd``) or its area is outside
  ``[0, 1e10]``;
- IoU as pycocotools' ``bbIou`` computes it from ``x, y, w, h`` in float64; against a crowd box
  it is intersection / detection area, and a crowd box can match any number of detections;
- greedy matching per IoU threshold (.50:.05:.95): each detection in score order takes the
  unmatched non-ignored ground truth of highest IoU ≥ the threshold (the later one on a tie), and
  only when there is none, the best ignored one; a detection matched to an ignored ground truth,
  or unmatched and outside the area range, is ignored;
- per class, the detections of all images sorted by score (stable: image id, then rank within
  the image), cumulative TP/FP, precision made monotone, sampled at 101 recall points
  (``searchsorted(..., side='left')``, 0 past the last recall); a class without non-ignored ground
  truth gets -1 and is left out of the mean.

Instead of pycocotools' triple Python loop, all (image, class) groups are matched at once: groups
are bucketed by their number of ground truths, and one vectorised step per detection rank
matches every group of the bucket at all ten thresholds together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Exactly pycocotools' Params.setDetParams values (np.linspace, not np.arange).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_ALL = (0.0**2, 1e5**2)
MAX_DETS = 100


@dataclass
class CocoEvalResult:
    """What the evaluation found.

    Attributes:
        precision: (T, R, K) interpolated precision per IoU threshold, recall point and class;
            -1 for classes without non-ignored ground truth (pycocotools' ``eval['precision']``
            for area 'all', 100 detections).
        n_gt: (K,) non-ignored ground truths per class.
        n_img: (K,) images holding a non-ignored ground truth of the class.
        det_cls, det_score: (D,) the evaluated detections (best 100 per image and class), sorted
            by class, then score as the accumulation orders them.
        det_tp, det_ignored: (D, T) true positive / ignored at each IoU threshold.
        det_img: (D,) image position of each evaluated detection (for resampling images).
    """

    precision: np.ndarray
    n_gt: np.ndarray
    n_img: np.ndarray
    det_cls: np.ndarray
    det_score: np.ndarray
    det_tp: np.ndarray
    det_ignored: np.ndarray
    det_img: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """(K,) classes that count in the mean."""
        return self.n_gt > 0

    def map(self, t: int | None = None) -> float:
        """Mean precision over valid classes (all thresholds, or threshold index ``t``); 0 if none."""
        p = self.precision if t is None else self.precision[t:t + 1]
        p = p[:, :, self.valid]
        return float(np.mean(p)) if p.size else 0.0


def coco_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """pycocotools' bbIou, batched: (k, 4) detections vs (k, G, 4) ground truths, x, y, w, h.

    Returns (k, G): intersection over union, or over the detection's area for crowd boxes.
    """
    d = dt[:, None, :]  # (k, 1, 4)
    w = np.minimum(d[..., 2] + d[..., 0], gt[..., 2] + gt[..., 0]) - np.maximum(d[..., 0], gt[..., 0])
    h = np.minimum(d[..., 3] + d[..., 1], gt[..., 3] + gt[..., 1]) - np.maximum(d[..., 1], gt[..., 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    da = d[..., 2] * d[..., 3]
    union = np.where(crowd, da, da + gt[..., 2] * gt[..., 3] - inter)
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=inter > 0)
    return out


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal values in a sorted key array: (unique keys, starts, counts)."""
    if keys.size == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    counts = np.diff(np.r_[starts, keys.size])
    return keys[starts], starts, counts


def _match(d_box: np.ndarray, d_start: np.ndarray, d_count: np.ndarray, g_box: np.ndarray,
           g_crowd: np.ndarray, g_ign: np.ndarray, g_start: np.ndarray,
           g_count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy COCO matching of every group at every IoU threshold.

    Detections are sorted by group then score, ground truths by group then ignore flag.
    Returns (D, T) matched and (D, T) matched-to-an-ignored-ground-truth flags.
    """
    thr = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[None, :, None]  # (1, T, 1)
    T = len(IOU_THRESHOLDS)
    matched = np.zeros((d_box.shape[0], T), dtype=bool)
    to_ignored = np.zeros((d_box.shape[0], T), dtype=bool)
    has_gt = g_count > 0
    bucket = np.where(has_gt, np.ceil(np.log2(np.maximum(g_count, 1))).astype(np.int64), -1)
    for b in np.unique(bucket[has_gt]):
        sel = np.flatnonzero(bucket == b)
        sel = sel[np.argsort(-d_count[sel], kind="stable")]  # most detections first
        G = int(g_count[sel].max())
        gi = np.arange(G)
        g_valid = gi[None, :] < g_count[sel, None]  # (n, G)
        idx = np.where(g_valid, g_start[sel, None] + gi[None, :], 0)
        gb, gc, gig = g_box[idx], g_crowd[idx] & g_valid, g_ign[idx] & g_valid  # (n, G, ...)
        used = np.zeros((sel.size, T, G), dtype=bool)
        counts = d_count[sel]
        for r in range(int(counts[0])):
            k = int(np.count_nonzero(counts > r))  # groups with a detection of rank r: a prefix
            di = d_start[sel[:k]] + r
            iou = coco_iou(d_box[di], gb[:k], gc[:k])  # (k, G)
            iou = np.where(g_valid[:k], iou, -1.0)[:, None, :]  # (k, 1, G)
            ok = (iou >= thr) & ~(used[:k] & ~gc[:k, None, :])  # (k, T, G)
            ign = gig[:k, None, :]
            m_reg, any_reg = _last_best(iou, ok & ~ign)
            m_ign, any_ign = _last_best(iou, ok & ign)
            m = np.where(any_reg, m_reg, m_ign)  # (k, T)
            hit = any_reg | any_ign
            rows, ts = np.nonzero(hit)
            used[rows, ts, m[rows, ts]] = True
            matched[di] = hit
            to_ignored[di] = ~any_reg & any_ign
    return matched, to_ignored


def _last_best(iou: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the highest-IoU candidate along the last axis, the last one on a tie."""
    v = np.where(cand, iou, -np.inf)[..., ::-1]
    return v.shape[-1] - 1 - v.argmax(-1), cand.any(-1)


def ignored_gt(gt_box: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """(n,) ground truths that do not count: crowd regions and areas outside the range 'all'.

    Args:
        gt_box: (n, 4) x, y, w, h.
        gt_crowd: (n,) crowd flags.
    """
    area = gt_box[:, 2] * gt_box[:, 3]
    return gt_crowd | (area < AREA_ALL[0]) | (area > AREA_ALL[1])


def evaluate_coco(nc: int, gt_img: np.ndarray, gt_cls: np.ndarray, gt_box: np.ndarray, gt_crowd: np.ndarray,
                  dt_img: np.ndarray, dt_cls: np.ndarray, dt_box: np.ndarray, dt_score: np.ndarray,
                  max_dets: int = MAX_DETS) -> CocoEvalResult:
    """Evaluate detections against ground truth as pycocotools does (bbox, area 'all').

    Args:
        nc: number of classes (class ids are 0..nc-1).
        gt_img, dt_img: image position of each box, in the order of sorted image ids.
        gt_cls, dt_cls: class ids.
        gt_box, dt_box: (n, 4) float64 x, y, w, h.
        gt_crowd: ground truths that are crowd regions (ignored; COCO's crowd IoU).
        dt_score: scores. Within an image and class, ties keep the order of the input arrays.
        max_dets: detections per image and class that count.
    """
    T, R = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    gt_ign = ignored_gt(gt_box, gt_crowd)
    # ground truths: by (image, class), non-ignored first, stable
    go = np.lexsort((gt_ign, gt_cls, gt_img))
    gkey = gt_img[go].astype(np.int64) * nc + gt_cls[go]
    # detections: by (image, class), score descending, stable; keep the best max_dets
    do = np.lexsort((-dt_score, dt_cls, dt_img))
    dkey = dt_img[do].astype(np.int64) * nc + dt_cls[do]
    keys, starts, counts = _groups(dkey)
    rank = np.arange(dkey.size) - np.repeat(starts, counts)
    top = rank < max_dets
    do, dkey, rank = do[top], dkey[top], rank[top]
    keys, d_start, d_count = _groups(dkey)
    g_start = np.searchsorted(gkey, keys, side="left")
    g_count = np.searchsorted(gkey, keys, side="right") - g_start

    d_box = dt_box[do]
    matched, to_ign = _match(d_box, d_start, d_count, gt_box[go], gt_crowd[go], gt_ign[go], g_start, g_count)
    d_area = d_box[:, 2] * d_box[:, 3]
    outside = ((d_area < AREA_ALL[0]) | (d_area > AREA_ALL[1]))[:, None]
    ignored = to_ign | (~matched & outside)
    tp = matched & ~ignored

    # accumulate: per class, all images' detections by score (stable: image, then rank)
    d_cls, d_img, d_score = dt_cls[do], dt_img[do], dt_score[do]
    ao = np.lexsort((rank, d_img, -d_score, d_cls))
    d_cls, d_score, d_img, tp, ignored = d_cls[ao], d_score[ao], d_img[ao], tp[ao], ignored[ao]
    fp = ~tp & ~ignored
    real = ~gt_ign
    n_gt = np.bincount(gt_cls[real], minlength=nc)[:nc]
    pairs = np.unique(gt_img[real].astype(np.int64) * nc + gt_cls[real])
    n_img = np.bincount(pairs % nc, minlength=nc)[:nc]
    precision = -np.ones((T, R, nc))
    bounds = np.searchsorted(d_cls, np.arange(nc + 1))
    for c in np.flatnonzero(n_gt):
        lo, hi = bounds[c], bounds[c + 1]
        nd = hi - lo
        q = np.zeros((T, R))
        if nd:
            tps = np.cumsum(tp[lo:hi], axis=0).astype(float)  # (nd, T)
            fps = np.cumsum(fp[lo:hi], axis=0).astype(float)
            rc = tps / n_gt[c]
            pr = tps / (fps + tps + np.spacing(1))
            pr = np.maximum.accumulate(pr[::-1], axis=0)[::-1]
            for t in range(T):
                inds = np.searchsorted(rc[:, t], RECALL_THRESHOLDS, side="left")
                inside = inds < nd
                q[t, inside] = pr[inds[inside], t]
        precision[:, :, c] = q
    return CocoEvalResult(precision=precision, n_gt=n_gt, n_img=n_img, det_cls=d_cls, det_score=d_score,
                          det_tp=tp, det_ignored=ignored, det_img=d_img)
