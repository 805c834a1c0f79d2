"""Letterboxing: resize keeping the aspect ratio, pad to a square with grey, and map boxes back."""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from yoloslim.data.augment import PAD


class LetterboxInfo(NamedTuple):
    """How an image was letterboxed: ``letterboxed = original * ratio + (pad_w, pad_h)``.

    Attributes:
        orig_h, orig_w: size of the original image.
        ratio: the resize factor.
        pad_w, pad_h: left and top padding in pixels of the letterboxed image.
    """

    orig_h: int
    orig_w: int
    ratio: float
    pad_w: float
    pad_h: float


def resize_long_side(img: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize so that the long side is ``size``; returns the image and the ratio."""
    h, w = img.shape[:2]
    r = size / max(h, w)
    if r != 1:
        nw, nh = max(1, round(w * r)), max(1, round(h * r))
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    return img, r


def pad_square(img: np.ndarray, size: int) -> tuple[np.ndarray, int, int]:
    """Centre an image (long side <= ``size``) on a ``size x size`` grey canvas; returns it, left, top."""
    h, w = img.shape[:2]
    left, top = int(round((size - w) / 2 - 0.1)), int(round((size - h) / 2 - 0.1))
    out = np.full((size, size, 3), PAD, np.uint8)
    out[top:top + h, left:left + w] = img
    return out, left, top


def letterbox(img: np.ndarray, imgsz: int) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize an ``(h, w, 3)`` image (any channel order) into an ``(imgsz, imgsz, 3)`` letterbox.

    Returns:
        The letterboxed image and the :class:`LetterboxInfo` to map boxes back.
    """
    h, w = img.shape[:2]
    resized, r = resize_long_side(img, imgsz)
    out, left, top = pad_square(resized, imgsz)
    return out, LetterboxInfo(h, w, r, float(left), float(top))


def scale_boxes_back(boxes: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Map ``(n, 4)`` xyxy boxes from letterboxed pixels to original-image pixels, clipped to the image.

    Works on numpy arrays and torch tensors alike (returns the same kind).
    """
    out = boxes.clone() if hasattr(boxes, "clone") else np.array(boxes, dtype=np.float32, copy=True)
    out[:, [0, 2]] = (out[:, [0, 2]] - info.pad_w) / info.ratio
    out[:, [1, 3]] = (out[:, [1, 3]] - info.pad_h) / info.ratio
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, info.orig_w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, info.orig_h)
    return out
