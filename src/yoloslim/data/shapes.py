"""Drawing primitives of the synthetic data set: class shapes as masks, textured backgrounds, clutter.

Every function takes a ``numpy.random.Generator`` and uses nothing else that is random, so an image
is a pure function of its generator's seed.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

# Class names of the built-in data set, in index order.
CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "letter_A", "letter_S")
_GLYPHS = {"letter_A": "A", "letter_S": "S"}
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX)
_SHIFT = 4  # sub-pixel bits for cv2.fillPoly


def _circle(n: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], 1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    t = np.linspace(-np.pi / 2, 1.5 * np.pi, 2 * points, endpoint=False)
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([np.cos(t) * r, np.sin(t) * r], 1)


def _cross(a: float = 0.32) -> np.ndarray:
    return np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a],
                     [-1, a], [-1, -a], [-a, -a]], float)


# Unit polygons (centred on 0, radius ~1); a ring is an outer and an inner contour.
_POLYGONS: dict[str, list[np.ndarray]] = {
    "circle": [_circle()],
    "square": [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)],
    "triangle": [_circle(3) @ np.array([[0, 1], [-1, 0]], float)],  # apex up
    "star": [_star()],
    "cross": [_cross()],
}


def shape_mask(name: str, target: float, aspect: float, angle: float, rng: np.random.Generator
               ) -> tuple[np.ndarray, float, float]:
    """A class shape as an anti-aliased uint8 mask whose bounding box has its long side ``target`` px.

    Returns:
        ``(mask (h, w) uint8, x0, y0)``: the mask and the offset of its top-left pixel relative to the
        shape's centre.
    """
    if name in _GLYPHS:
        return _glyph_mask(_GLYPHS[name], target, aspect, angle, rng)
    if name == "ring":
        inner = rng.uniform(0.55, 0.75)
        contours = [_circle(), _circle() * inner]
    else:
        contours = _POLYGONS[name]
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, s], [-s, c]])
    pts = [(p * np.array([aspect, 1.0])) @ rot for p in contours]
    lo, hi = pts[0].min(0), pts[0].max(0)
    k = target / max(hi - lo)
    pts = [p * k for p in pts]
    lo, hi = lo * k, hi * k
    x0, y0 = np.floor(lo) - 1
    w, h = int(np.ceil(hi[0] - x0)) + 2, int(np.ceil(hi[1] - y0)) + 2
    mask = np.zeros((h, w), np.uint8)
    poly = [np.round((p - [x0, y0]) * (1 << _SHIFT)).astype(np.int32) for p in pts]
    cv2.fillPoly(mask, poly, 255, lineType=cv2.LINE_AA, shift=_SHIFT)
    return mask, float(x0), float(y0)


@lru_cache(maxsize=32)
def _glyph_template(char: str, font: int, thickness: int) -> np.ndarray:
    """The character drawn white on black, cropped to its ink, as float32 0..255."""
    canvas = np.zeros((120, 120), np.uint8)
    cv2.putText(canvas, char, (20, 95), font, 3.0, 255, thickness, cv2.LINE_AA)
    ys, xs = np.nonzero(canvas > 127)
    crop = canvas[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    return np.pad(crop, 2).astype(np.float32)


def _glyph_mask(char: str, target: float, aspect: float, angle: float, rng: np.random.Generator
                ) -> tuple[np.ndarray, float, float]:
    font = _FONTS[int(rng.integers(len(_FONTS)))]
    tpl = _glyph_template(char, font, int(rng.integers(5, 11)))
    th, tw = tpl.shape
    c, s = np.cos(angle), np.sin(angle)
    lin = np.array([[c, -s], [s, c]]) @ np.diag([aspect, 1.0])  # template (x, y) -> centred image (x, y)
    corners = (np.array([[0, 0], [tw, 0], [tw, th], [0, th]], float) - [tw / 2, th / 2]) @ lin.T
    lo, hi = corners.min(0), corners.max(0)
    k = target / max(hi - lo)
    lin, lo, hi = lin * k, lo * k, hi * k
    x0, y0 = np.floor(lo) - 1
    w, h = int(np.ceil(hi[0] - x0)) + 2, int(np.ceil(hi[1] - y0)) + 2
    t = -lin @ np.array([tw / 2, th / 2]) - [x0, y0]
    m = np.hstack([lin, t[:, None]]).astype(np.float32)
    mask = cv2.warpAffine(tpl, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    return mask.clip(0, 255).astype(np.uint8), float(x0), float(y0)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return xx, yy


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A textured float32 BGR ``(size, size, 3)`` background: smooth colour field + one texture."""
    base = rng.uniform(30, 225, 3).astype(np.float32)
    field = rng.uniform(-70, 70, (4, 4, 3)).astype(np.float32)
    mid = cv2.resize(field, (32, 32), interpolation=cv2.INTER_CUBIC)  # smooth, then cheap to enlarge
    img = base + cv2.resize(mid, (size, size), interpolation=cv2.INTER_LINEAR)
    kind = int(rng.integers(4))
    xx, yy = _grid(size)
    if kind == 0:  # blotches
        n = max(4, size // int(rng.integers(6, 20)))
        blot = rng.standard_normal((n, n), dtype=np.float32)
        tex = cv2.resize(blot, (size, size), interpolation=cv2.INTER_LINEAR) * rng.uniform(10, 30)
    elif kind == 1:  # stripes
        t = rng.uniform(0, np.pi)
        period = rng.uniform(0.03, 0.15) * size
        tex = np.sin((xx * np.cos(t) + yy * np.sin(t)) * (2 * np.pi / period)) * rng.uniform(10, 35)
    elif kind == 2:  # checkerboard
        cell = max(2, int(rng.uniform(0.04, 0.15) * size))
        tex = ((xx.astype(np.int32) // cell + yy.astype(np.int32) // cell) % 2).astype(np.float32)
        tex = (tex - 0.5) * rng.uniform(15, 45)
    else:  # fine grain only
        tex = (rng.random((size, size), dtype=np.float32) - 0.5) * rng.uniform(15, 50)
    img += tex[..., None] * rng.uniform(0.5, 1.0, 3).astype(np.float32)
    return img


def draw_clutter(img: np.ndarray, rng: np.random.Generator, count: int) -> None:
    """Draw ``count`` non-class distractors in place: lines, scribbles, partial arcs, splats, dots."""
    size = img.shape[0]
    for _ in range(count):
        kind = int(rng.integers(5))
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        thick = int(rng.integers(1, max(2, size // 80) + 1))
        if kind == 0:
            p = rng.integers(0, size, 4)
            cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, thick, cv2.LINE_AA)
        elif kind == 1:
            n = int(rng.integers(4, 9))
            steps = rng.normal(0, size * 0.08, (n, 2)).cumsum(0) + rng.uniform(0, size, 2)
            cv2.polylines(img, [steps.astype(np.int32)], False, colour, thick, cv2.LINE_AA)
        elif kind == 2:
            c = rng.integers(0, size, 2)
            axes = rng.uniform(0.03, 0.2, 2) * size
            start = rng.uniform(0, 360)
            cv2.ellipse(img, (int(c[0]), int(c[1])), (int(axes[0]), int(axes[1])), rng.uniform(0, 180),
                        start, start + rng.uniform(40, 180), colour, thick, cv2.LINE_AA)
        elif kind == 3:  # a splat: a cluster of overlapping discs, unlike any class shape
            centre = rng.uniform(0, size, 2)
            for _k in range(int(rng.integers(4, 10))):
                c = centre + rng.normal(0, 0.04 * size, 2)
                r = max(1, int(rng.uniform(0.01, 0.035) * size))
                cv2.circle(img, (int(c[0]), int(c[1])), r, colour, -1, cv2.LINE_AA)
        else:
            for p in rng.integers(0, size, (int(rng.integers(3, 12)), 2)):
                cv2.circle(img, (int(p[0]), int(p[1])), int(rng.integers(1, 3)), colour, -1, cv2.LINE_AA)
