"""The Oxford Hand data set (Mittal, Zisserman, Torr, BMVC 2011): ``.mat`` hand boxes -> axis-aligned boxes.

Layout, as distributed (``hand_dataset/``)::

    training_dataset/training_data/{images/*.jpg, annotations/*.mat}
    validation_dataset/validation_data/{images, annotations}
    test_dataset/test_data/{images, annotations}

(the ``*_data`` folders may also sit directly in the root). These three become the ``train``,
``val`` and ``test`` splits. Each annotation file holds ``boxes``, a cell array with one struct per
hand whose fields ``a``, ``b``, ``c``, ``d`` are the four corners of the (possibly rotated) hand box,
each ``[y x]`` in MATLAB's 1-based pixel coordinates; other fields (``handtype``, ...) are ignored.
A hand's box is the axis-aligned box around its corners, moved to 0-based coordinates
(``x1 = min(x) - 1``, ``x2 = max(x) - 1``), clipped to the image. One class: ``hand``.

Reading ``.mat`` files needs scipy, an optional dependency: ``pip install 'yoloslim[data]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from yoloslim.data.images import image_size, list_images, verify_image
from yoloslim.data.source import DataSource, Problem, Sample, box_problems
from yoloslim.errors import UserError

NAMES = ["hand"]
# split -> the folder names the data set uses for it
SPLIT_DIRS = {"train": ("training_dataset", "training_data"), "val": ("validation_dataset", "validation_data"),
              "test": ("test_dataset", "test_data")}
CORNERS = ("a", "b", "c", "d")
SCIPY_MISSING = "reading Oxford Hand .mat files needs scipy: pip install 'yoloslim[data]' (or pip install scipy)"


def _scipy_io() -> Any:
    """``scipy.io``, or a UserError saying how to install it (scipy is an optional dependency)."""
    try:
        import scipy.io
    except ImportError:
        raise UserError(SCIPY_MISSING) from None
    return scipy.io


def read_hand_mat(path: Path) -> np.ndarray:
    """The hand boxes of one annotation file: ``(n, 4)`` float32 ``x1, y1, x2, y2``, 0-based.

    Raises:
        ValueError: the file cannot be read or does not hold ``boxes`` of a, b, c, d corners.
    """
    sio = _scipy_io()
    try:
        mat = sio.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as e:  # scipy raises several types for a damaged file
        raise ValueError(f"not a readable .mat file ({e.__class__.__name__})") from None
    if "boxes" not in mat:
        raise ValueError("no 'boxes' variable")
    out = []
    for k, box in enumerate(np.atleast_1d(mat["boxes"]).ravel()):
        try:
            yx = np.stack([np.asarray(getattr(box, c), np.float64).reshape(-1)[:2] for c in CORNERS])  # (4, 2)
        except (AttributeError, ValueError, TypeError):
            raise ValueError(f"box {k + 1} is not a struct with corners a, b, c, d as [y x]") from None
        if yx.shape != (4, 2) or not np.isfinite(yx).all():
            raise ValueError(f"box {k + 1} has corners that are not [y x] pairs of numbers")
        ys, xs = yx[:, 0] - 1, yx[:, 1] - 1
        out.append([xs.min(), ys.min(), xs.max(), ys.max()])
    return np.asarray(out, np.float32).reshape(-1, 4)


def write_hand_mat(path: Path, corners: list[np.ndarray]) -> Path:
    """Write an annotation file in the data set's structure; ``corners`` are ``(4, 2)`` ``[y x]`` 1-based."""
    sio = _scipy_io()
    cell = np.empty((1, len(corners)), dtype=object)
    for k, yx in enumerate(corners):
        yx = np.asarray(yx, np.float64).reshape(4, 2)
        cell[0, k] = {c: yx[i].reshape(1, 2) for i, c in enumerate(CORNERS)}
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.savemat(str(path), {"boxes": cell})
    return path


def split_folders(root: Path) -> dict[str, Path]:
    """The ``*_data`` folder of each split present under ``root``."""
    out = {}
    for split, (outer, inner) in SPLIT_DIRS.items():
        for cand in (root / outer / inner, root / inner, root / outer):
            if (cand / "annotations").is_dir():
                out[split] = cand
                break
    return out


def load_oxford_hand(root: str | Path) -> DataSource:
    """Read the data set's splits (see the module doc).

    Raises:
        UserError: no split folder with ``annotations/`` under ``root``, or scipy is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder (expected the Oxford Hand data set, hand_dataset/)")
    folders = split_folders(root)
    if not folders:
        raise UserError(f"{root}: not the Oxford Hand data set (no training_dataset/training_data/annotations/ "
                        "or similar split folder)")
    _scipy_io()
    source = DataSource(names=list(NAMES), splits={}, root=root, fmt="oxford-hand")
    for split, folder in folders.items():
        images = {p.stem: p for p in list_images(folder / "images")} if (folder / "images").is_dir() else {}
        samples = []
        for mat in sorted((folder / "annotations").glob("*.mat")):
            sample, problems = _sample(mat, images.pop(mat.stem, None))
            source.problems.extend(problems)
            if sample is not None:
                samples.append(sample)
        for stem in sorted(images):
            source.problems.append(Problem(images[stem], "no annotation file (skipped)"))
        source.splits[split] = samples
        source.backgrounds[split] = sum(len(s.classes) == 0 for s in samples)
    return source


def _sample(mat: Path, image: Path | None) -> tuple[Sample | None, list[Problem]]:
    if image is None:
        return None, [Problem(mat, "image not found in images/")]
    bad = verify_image(image)
    size = None if bad else image_size(image)
    if size is None:
        return None, [Problem(image, bad or "corrupt image (cannot read its size)")]
    try:
        boxes = read_hand_mat(mat)
    except ValueError as e:
        return None, [Problem(mat, str(e))]
    w, h = size
    boxes, keep, problems = box_problems(mat, boxes, w, h)
    return Sample.make(image, boxes[keep], np.zeros(int(keep.sum()), np.int64), w, h), problems
