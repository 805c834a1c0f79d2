"""Drawing detections on images with OpenCV: a box per detection, labelled with class and score."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np


def class_color(c: int) -> tuple[int, int, int]:
    """A distinct, stable BGR colour per class (golden-ratio hues)."""
    h = (c * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(img: np.ndarray, boxes: np.ndarray, scores: np.ndarray | None, classes: np.ndarray,
                    names: list[str]) -> np.ndarray:
    """A copy of ``img`` with every detection drawn.

    Args:
        img: BGR uint8 ``(h, w, 3)``.
        boxes: ``(n, 4)`` x1, y1, x2, y2 in the image's pixels.
        scores: ``(n,)`` confidences; None: labels without a score (ground truth).
        classes: ``(n,)`` class indices into ``names``.
        names: class names.

    Returns:
        The annotated BGR image.
    """
    out = img.copy()
    h, w = out.shape[:2]
    thick = max(1, round((h + w) / 600))
    font = max(0.35, (h + w) / 2400)
    for box, score, c in zip(boxes, [None] * len(boxes) if scores is None else scores, classes, strict=True):
        c = int(c)
        color = class_color(c)
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        label = f"{names[c] if 0 <= c < len(names) else c}" + ("" if score is None else f" {float(score):.2f}")
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font, max(1, thick - 1))
        top = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else y1  # above the box, or inside at the top
        cv2.rectangle(out, (x1, top), (x1 + tw + 2, top + th + base + 2), color, -1)
        cv2.putText(out, label, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font, _ink(color),
                    max(1, thick - 1), cv2.LINE_AA)
    return out


def draw_fps(img: np.ndarray, fps: float) -> np.ndarray:
    """Write ``FPS x.y`` in the top-left corner, in place; returns ``img``."""
    h, w = img.shape[:2]
    font = max(0.4, (h + w) / 1800)
    text = f"FPS {fps:.1f}"
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
    cv2.rectangle(img, (0, 0), (tw + 6, th + base + 6), (0, 0, 0), -1)
    cv2.putText(img, text, (3, th + 3), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def _ink(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white text, whichever reads better on ``color`` (BGR)."""
    b, g, r = color
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)
