"""What the readers return: samples with boxes in image pixels, and the problems they met on the way."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yoloslim.log import logger

SPLITS = ("train", "val", "test")


@dataclass
class Sample:
    """One image and its objects.

    Attributes:
        path: the image file.
        boxes: ``(n, 4)`` float32 ``x1, y1, x2, y2`` in pixels of the original image (edges, so a box
            covering pixel columns 0..9 is ``x1=0, x2=10``).
        classes: ``(n,)`` int64 class indices into the data set's ``names``.
        difficult: ``(n,)`` bool, VOC's ``difficult`` flag (always False for YOLO txt labels).
        width: image width in pixels.
        height: image height in pixels.
    """

    path: Path
    boxes: np.ndarray
    classes: np.ndarray
    difficult: np.ndarray
    width: int
    height: int

    @classmethod
    def make(cls, path: Path, boxes: list | np.ndarray, classes: list | np.ndarray, width: int, height: int,
             difficult: list | np.ndarray | None = None) -> Sample:
        """Build a sample, converting lists to arrays of the right dtype and shape."""
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        c = np.asarray(classes, dtype=np.int64).reshape(-1)
        d = np.zeros(len(c), bool) if difficult is None else np.asarray(difficult, dtype=bool).reshape(-1)
        return cls(Path(path), b, c, d, int(width), int(height))


@dataclass
class Problem:
    """Something wrong in one file, and what the reader did about it.

    Attributes:
        path: the offending file (image, label or annotation).
        message: what is wrong and what was done, e.g. ``"2 boxes of zero area (dropped)"``.
        skipped: True when the whole sample was left out; False when it was kept after a fix.
    """

    path: Path
    message: str
    skipped: bool = True

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class DataSource:
    """A detection data set as read from disk.

    Attributes:
        names: class names; a sample's class ``k`` is ``names[k]``.
        splits: ``'train'``, ``'val'`` and maybe ``'test'`` -> the readable samples of that split.
        root: the data set's folder.
        problems: every problem met while reading (samples with a fatal one are not in ``splits``).
        fmt: ``"yolo"``, ``"voc"``, ``"coco"`` (a data.yaml naming COCO json splits), or what a
            converter read (``"labelme"``, ``"oxford-hand"``).
        backgrounds: per split, how many images have no objects (empty or missing label file).
    """

    names: list[str]
    splits: dict[str, list[Sample]]
    root: Path
    problems: list[Problem] = field(default_factory=list)
    fmt: str = "yolo"
    backgrounds: dict[str, int] = field(default_factory=dict)


def keep_mask(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Which boxes still have a positive area (at least 1e-3 px on each side) once clipped to the image."""
    c = _clip(boxes, width, height)
    return ((c[:, 2] - c[:, 0]) > 1e-3) & ((c[:, 3] - c[:, 1]) > 1e-3)


def _clip(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def box_problems(path: Path, boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray,
                                                                                  list[Problem]]:
    """Clip boxes to the image and drop empty ones: ``(clipped boxes, keep mask, problems)``."""
    keep = keep_mask(boxes, width, height)
    clipped = _clip(boxes, width, height)
    problems = []
    n_out = int((np.abs(clipped - boxes).max(axis=1) > 0.5)[keep].sum()) if len(boxes) else 0
    if n_out:
        problems.append(Problem(path, f"{n_out} box(es) outside the image (clipped)", skipped=False))
    if (~keep).any():
        problems.append(Problem(path, f"{int((~keep).sum())} box(es) of zero area (dropped)", skipped=False))
    return clipped, keep, problems


def warn_problems(source: DataSource, what: str, limit: int = 20) -> None:
    """Log ONE warning that counts the problems of a data set and lists (the first ``limit`` of) them."""
    if not source.problems:
        return
    skipped = sorted({str(p.path) for p in source.problems if p.skipped})
    lines = [f"  {p}" for p in source.problems[:limit]]
    more = len(source.problems) - limit
    if more > 0:
        lines.append(f"  ... and {more} more")
    logger.warning(f"{what}: {len(source.problems)} problem(s), {len(skipped)} sample(s) skipped "
                   f"(`yoloslim data check --data {what}` lists them all):\n" + "\n".join(lines))
