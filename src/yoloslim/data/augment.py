"""Training augmentations as pure functions of numpy arrays and a ``numpy.random.Generator``.

Images are uint8 ``(h, w, 3)`` (any channel order unless said otherwise); labels are float32
``(n, 5)`` rows ``[cls, x1, y1, x2, y2]`` in pixels of that image. Each function returns new arrays
and leaves its inputs alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

PAD = 114  # grey of the padding, as in the YOLO family


@dataclass
class AugmentConfig:
    """Augmentation strengths (the YOLOv5 ``hyp.scratch-low`` defaults); 0 turns one off.

    Attributes:
        hsv_h, hsv_s, hsv_v: hue, saturation and value gains (fractions).
        degrees: rotation range (+/- degrees).
        translate: translation range (fraction of the image).
        scale: scale gain range (1 +/- scale).
        shear: shear range (+/- degrees).
        perspective: perspective range (fraction, 0..0.001 is sensible).
        flipud, fliplr: probabilities of vertical and horizontal flips.
        mosaic: probability of a 4-image mosaic.
        mixup: probability of mixing with a second (mosaic) image.
    """

    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    shear: float = 0.0
    perspective: float = 0.0
    flipud: float = 0.0
    fliplr: float = 0.5
    mosaic: float = 1.0
    mixup: float = 0.0


def hsv_jitter(img_bgr: np.ndarray, hgain: float, sgain: float, vgain: float,
               rng: np.random.Generator) -> np.ndarray:
    """Scale hue, saturation and value by random gains in ``1 +/- gain`` (through lookup tables)."""
    if not (hgain or sgain or vgain):
        return img_bgr
    r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img_bgr, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def flip_lr(img: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right."""
    w = img.shape[1]
    out = labels.copy()
    out[:, 1], out[:, 3] = w - labels[:, 3], w - labels[:, 1]
    return np.ascontiguousarray(img[:, ::-1]), out


def flip_ud(img: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror top-bottom."""
    h = img.shape[0]
    out = labels.copy()
    out[:, 2], out[:, 4] = h - labels[:, 4], h - labels[:, 2]
    return np.ascontiguousarray(img[::-1]), out


def random_affine(img: np.ndarray, labels: np.ndarray, rng: np.random.Generator, degrees: float = 0.0,
                  translate: float = 0.1, scale: float = 0.5, shear: float = 0.0, perspective: float = 0.0,
                  border: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation, scale, shear, translation and perspective of image and boxes.

    The output is ``(h + 2 * border, w + 2 * border)``: a negative ``border`` crops (a 2S mosaic with
    ``border=-S/2`` gives an S image). Boxes become the bounding boxes of their transformed corners,
    are clipped to the output and dropped when they end up tiny (< 2 px a side), squashed (aspect > 20)
    or with less than 10 % of their scaled area left.
    """
    h, w = img.shape[0] + 2 * border, img.shape[1] + 2 * border
    centre = np.eye(3)
    centre[0, 2], centre[1, 2] = -img.shape[1] / 2, -img.shape[0] / 2
    persp = np.eye(3)
    persp[2, 0], persp[2, 1] = rng.uniform(-perspective, perspective, 2)
    a = rng.uniform(-degrees, degrees)
    s = rng.uniform(1 - scale, 1 + scale)
    rot = np.eye(3)
    rot[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    sh = np.eye(3)
    sh[0, 1], sh[1, 0] = (math.tan(math.radians(v)) for v in rng.uniform(-shear, shear, 2))
    tr = np.eye(3)
    tr[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * w
    tr[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * h
    m = tr @ sh @ rot @ persp @ centre
    if perspective:
        out = cv2.warpPerspective(img, m, dsize=(w, h), borderValue=(PAD, PAD, PAD))
    else:
        out = cv2.warpAffine(img, m[:2], dsize=(w, h), borderValue=(PAD, PAD, PAD))
    if not len(labels):
        return out, labels.reshape(0, 5).astype(np.float32)
    boxes = transform_boxes(labels[:, 1:5], m, w, h)
    keep = box_candidates(labels[:, 1:5] * s, boxes)
    return out, np.hstack([labels[keep, :1], boxes[keep]]).astype(np.float32)


def transform_boxes(boxes: np.ndarray, m: np.ndarray, w: int, h: int) -> np.ndarray:
    """Boxes ``(n, 4)`` through the 3x3 matrix ``m``: hull of the four corners, clipped to ``w x h``."""
    n = len(boxes)
    xy = np.ones((n * 4, 3))
    xy[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)  # corners x1y1, x2y2, x1y2, x2y1
    xy = xy @ m.T
    xy = (xy[:, :2] / xy[:, 2:3]).reshape(n, 8)
    x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
    out = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def box_candidates(before: np.ndarray, after: np.ndarray, min_side: float = 2.0, max_aspect: float = 20.0,
                   min_area_ratio: float = 0.1) -> np.ndarray:
    """Mask of boxes worth keeping after a transform (``before`` already scaled by the transform's gain)."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    aspect = np.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    return ((w2 > min_side) & (h2 > min_side) & (w2 * h2 / (w1 * h1 + 1e-16) > min_area_ratio)
            & (aspect < max_aspect))


def mosaic4(imgs: list[np.ndarray], labels: list[np.ndarray], size: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tile four images (each with its long side ``size``) around a random centre of a ``2*size`` canvas.

    Returns the ``(2*size, 2*size, 3)`` canvas and its labels (clipped, empty boxes dropped); follow
    with :func:`random_affine` and ``border=-size // 2`` to get back to ``size``.
    """
    s2 = 2 * size
    canvas = np.full((s2, s2, 3), PAD, np.uint8)
    xc, yc = (int(v) for v in rng.uniform(size / 2, 1.5 * size, 2))
    out = []
    for k, (img, lab) in enumerate(zip(imgs, labels, strict=False)):
        h, w = img.shape[:2]
        if k == 0:  # top left
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif k == 1:  # top right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s2), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif k == 2:  # bottom left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(s2, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:  # bottom right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s2), min(s2, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
        lab = lab.copy()
        lab[:, [1, 3]] += x1a - x1b
        lab[:, [2, 4]] += y1a - y1b
        out.append(lab)
    lab = np.concatenate(out, 0) if out else np.zeros((0, 5), np.float32)
    lab[:, 1:5] = lab[:, 1:5].clip(0, s2)
    keep = (lab[:, 3] - lab[:, 1] > 1e-3) & (lab[:, 4] - lab[:, 2] > 1e-3)
    return canvas, lab[keep].astype(np.float32)


def mixup(img1: np.ndarray, labels1: np.ndarray, img2: np.ndarray, labels2: np.ndarray,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-sized images with a ratio drawn from Beta(32, 32); keep both label sets."""
    r = rng.beta(32.0, 32.0)
    img = (img1.astype(np.float32) * r + img2.astype(np.float32) * (1 - r)).round().astype(np.uint8)
    return img, np.concatenate([labels1, labels2], 0)
