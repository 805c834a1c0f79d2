"""How much of a mAP, or of a difference in mAP, comes from which val images were drawn: the bootstrap.

A val set of 100 images gives one mAP; another 100 images of the same kind would give another. The
bootstrap (Efron 1979) draws the val images again with replacement, many times, and reads the spread of
the mAPs of the draws. For two models scored on the same images, the *paired* bootstrap scores both on
the same draws, so the interval of their difference leaves out what the images do to both alike: that is
the interval to read a pruned model's Δ against its control by.

No draw needs a second matching. Which detection matches which ground truth is settled inside its image,
so an image drawn k times counts its detections and ground truths k times in COCO's accumulation: the
cumulative sums of true and false positives become sums weighted by the draw counts. With every count 1
that is :func:`~yoloslim.engine.coco_eval.evaluate_coco`'s precision exactly; with other counts it equals
scoring k renamed copies of each image, up to the order of equal scores across images.

What the bootstrap does not measure: the run-to-run noise of training (another seed, another model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from yoloslim.engine.coco_eval import RECALL_THRESHOLDS, ignored_gt
from yoloslim.engine.metrics import DetectionMetrics
from yoloslim.models.io import atomic_write

ROUNDS = 1000  # draws; the 2.5 % tails of 1000 draws rest on 25 values each
LEVEL = 0.95
_CHUNK = 4_000_000  # floats per (draws, rows, thresholds) block of the weighted cumulative sums


@dataclass
class ImageMatches:
    """What COCO's accumulation needs from one evaluation, image by image.

    Attributes:
        nc: number of classes.
        image_ids: (I,) the images, sorted; draws are counts over this order.
        gt_count: (I, K) non-ignored ground truths per image and class.
        det_img: (D,) image position of each evaluated detection.
        det_cls: (D,) class; the detections are sorted by class, then score (the accumulation order).
        det_tp, det_fp: (D, T) true / false positive at each IoU threshold (an ignored detection is neither).
    """

    nc: int
    image_ids: np.ndarray
    gt_count: np.ndarray
    det_img: np.ndarray
    det_cls: np.ndarray
    det_tp: np.ndarray
    det_fp: np.ndarray

    @classmethod
    def from_metrics(cls, metrics: DetectionMetrics) -> ImageMatches:
        """The matches of everything added to ``metrics``."""
        ev = metrics.evaluate()
        images = metrics.images()
        ids = np.array(sorted(images), dtype=np.int64)
        gt_count = np.zeros((len(ids), len(metrics.names)), np.int64)
        for pos, i in enumerate(ids):
            box, cls_, ignore = images[int(i)][:3]  # boxes x1, y1, x2, y2
            xywh = np.concatenate((box[:, :2], box[:, 2:] - box[:, :2]), 1)
            np.add.at(gt_count[pos], cls_[~ignored_gt(xywh, ignore)], 1)
        return cls(nc=len(metrics.names), image_ids=ids, gt_count=gt_count, det_img=ev.det_img.astype(np.int64),
                   det_cls=ev.det_cls.astype(np.int64), det_tp=ev.det_tp.copy(),
                   det_fp=~ev.det_tp & ~ev.det_ignored)

    def save(self, path: str | Path) -> None:
        """Write the matches to an ``.npz`` file (atomically)."""
        arrays = {k: getattr(self, k) for k in ("image_ids", "gt_count", "det_img", "det_cls", "det_tp", "det_fp")}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, nc=np.int64(self.nc), **arrays)

        atomic_write(Path(path), write)

    @classmethod
    def load(cls, path: str | Path) -> ImageMatches:
        """Read what :meth:`save` wrote."""
        with np.load(path) as z:
            return cls(nc=int(z["nc"]), **{k: z[k] for k in ("image_ids", "gt_count", "det_img", "det_cls",
                                                             "det_tp", "det_fp")})

    def maps(self, counts: np.ndarray) -> np.ndarray:
        """mAP per IoU threshold for each draw.

        Args:
            counts: (B, I) how often each image is in each draw (all ones: the val set itself).

        Returns:
            (B, T) mean over the classes with ground truth in the draw of the AP at each IoU threshold;
            column 0 is mAP@.5, the row mean mAP@.5:.95.
        """
        counts = np.asarray(counts, dtype=np.float64)
        if counts.ndim != 2 or counts.shape[1] != len(self.image_ids):
            raise ValueError(f"counts must be (draws, {len(self.image_ids)} images), got {counts.shape}")
        draws, thresholds = len(counts), self.det_tp.shape[1]
        n_gt = counts @ self.gt_count  # (B, K)
        total = np.zeros((draws, thresholds))
        classes = np.zeros(draws)
        bounds = np.searchsorted(self.det_cls, np.arange(self.nc + 1))
        for c in range(self.nc):
            valid = n_gt[:, c] > 0  # (B,)
            lo, hi = bounds[c], bounds[c + 1]
            if hi > lo:
                total[valid] += self._class_ap(counts, n_gt[:, c], lo, hi)[valid]
            classes += valid
        return total / np.maximum(classes, 1)[:, None]

    def _class_ap(self, counts: np.ndarray, n_gt: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """(B, T) AP of the class whose detections are ``lo:hi``, for each draw (0 where it has no ground truth).

        Only the rows that are a true positive at some threshold can be where a recall threshold lands, and
        a row that is not one never raises the precision envelope, so the curve is evaluated at those rows
        alone: their cumulative true and false positives are ``counts`` times per-image cumulative counts.
        """
        tp, fp = self.det_tp[lo:hi], self.det_fp[lo:hi]  # (nd, T)
        thresholds = tp.shape[1]
        keep = np.flatnonzero(tp.any(1))  # (J,)
        ap = np.zeros((len(counts), thresholds))
        if not keep.size:
            return ap
        seg = np.searchsorted(keep, np.arange(hi - lo), side="left")  # the first kept row at or after each row
        inside = seg < len(keep)  # rows after the last true positive change nothing
        img, seg = self.det_img[lo:hi][inside], seg[inside]
        per_image = []
        for flags in (tp[inside], fp[inside]):
            m = np.zeros((len(self.image_ids), len(keep), thresholds))
            np.add.at(m, (img, seg), flags)
            per_image.append(np.cumsum(m, axis=1).reshape(len(self.image_ids), -1))  # (I, J·T)
        step = max(1, _CHUNK // (len(keep) * thresholds))
        for start in range(0, len(counts), step):
            w = counts[start:start + step]  # (b, I)
            tps, fps = ((w @ c).reshape(len(w), len(keep), thresholds) for c in per_image)  # (b, J, T)
            rc = tps / np.maximum(n_gt[start:start + step], 1e-12)[:, None, None]
            pr = tps / (fps + tps + np.spacing(1))
            pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
            for b in range(len(w)):
                for t in range(thresholds):
                    inds = np.searchsorted(rc[b, :, t], RECALL_THRESHOLDS, side="left")
                    ap[start + b, t] = pr[b, inds[inds < len(keep)], t].sum() / len(RECALL_THRESHOLDS)
        return ap


@dataclass
class Interval:
    """A value on the val set and its bootstrap percentile interval.

    Attributes:
        value: on the val set itself.
        low, high: the ``level`` percentile interval over the draws.
        above_zero: share of the draws where the value is ≥ 0 (read it for a difference).
    """

    value: float
    low: float
    high: float
    above_zero: float
    level: float
    rounds: int

    def to_dict(self, scale: float = 1.0, digits: int = 5) -> dict[str, Any]:
        """The numbers, ``value``, ``low`` and ``high`` times ``scale`` (100: points)."""
        return {"value": round(self.value * scale, digits), "low": round(self.low * scale, digits),
                "high": round(self.high * scale, digits), "above_zero": round(self.above_zero, 4),
                "level": self.level, "rounds": self.rounds}


def draws(images: int, rounds: int = ROUNDS, seed: int = 0) -> np.ndarray:
    """(rounds, images) counts: each row draws ``images`` images with replacement."""
    if images < 1 or rounds < 1:
        raise ValueError(f"need at least one image and one round, got {images} and {rounds}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(images, np.full(images, 1.0 / images), size=rounds)


def intervals(values: np.ndarray, on_set: np.ndarray, level: float = LEVEL) -> dict[str, Interval]:
    """mAP@.5 and mAP@.5:.95 intervals from per-draw (B, T) values and the val set's own (T,)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    q = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out = {}
    for key, col, own in (("map50", values[:, 0], on_set[0]), ("map", values.mean(1), on_set.mean())):
        low, high = np.percentile(col, q)
        out[key] = Interval(float(own), float(low), float(high), float((col >= 0).mean()), level, len(values))
    return out


def map_interval(matches: ImageMatches, rounds: int = ROUNDS, level: float = LEVEL, seed: int = 0,
                 ) -> dict[str, Interval]:
    """The bootstrap intervals of one model's mAP@.5 (``"map50"``) and mAP@.5:.95 (``"map"``)."""
    return intervals(*draw_maps({"m": matches}, rounds, seed)["m"], level)


def draw_maps(models: Mapping[str, ImageMatches], rounds: int = ROUNDS, seed: int = 0,
              ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each model's (B, T) mAPs on the same ``rounds`` draws, and its (T,) mAPs on the val set itself.

    Raises:
        ValueError: the models were scored on different images or classes.
    """
    first = next(iter(models.values()))
    for m in models.values():
        if m.nc != first.nc or not np.array_equal(m.image_ids, first.image_ids) or not np.array_equal(
                m.gt_count, first.gt_count):
            raise ValueError("the two models were not scored on the same images and ground truth")
    n = len(first.image_ids)
    counts, ones = draws(n, rounds, seed), np.ones((1, n))
    return {name: (m.maps(counts), m.maps(ones)[0]) for name, m in models.items()}


def difference(drawn: Mapping[str, tuple[np.ndarray, np.ndarray]], a: str, b: str, level: float = LEVEL,
               ) -> dict[str, Interval]:
    """The paired intervals of ``b``'s mAP minus ``a``'s from :func:`draw_maps`' results."""
    (a_draws, a_own), (b_draws, b_own) = drawn[a], drawn[b]
    return intervals(b_draws - a_draws, b_own - a_own, level)


def paired_difference(a: ImageMatches, b: ImageMatches, rounds: int = ROUNDS, level: float = LEVEL,
                      seed: int = 0) -> dict[str, Interval]:
    """The paired bootstrap intervals of ``b``'s mAP minus ``a``'s, both scored on the same draws.

    Raises:
        ValueError: the two were scored on different images or classes.
    """
    return difference(draw_maps({"a": a, "b": b}, rounds, seed), "a", "b", level)
