"""labelme annotations: one ``.json`` per image (``shapes``, ``imagePath``), anywhere under a folder.

Shapes become boxes by their type:

- ``rectangle``: its two corner points;
- ``polygon``: the bounding box of its points (what a detector is trained on; a polygon drawn for
  segmentation still marks where the object is);
- ``circle``: the box around it (centre and a point on the circle);
- any other type (``point``, ``line``, ``linestrip``, ``mask``, ...) marks no extent and is skipped,
  counted in a problem line of that file.

labelme coordinates are continuous pixel positions, so they are used as box edges unchanged.
A shape flagged ``difficult`` (a field some labelme versions add) is kept as ignored ground truth,
as VOC's. Class names come from a names file or, without one, from the labels found, sorted; shapes
of other labels are dropped and reported. The image is ``imagePath`` (relative to the json; Windows
separators are accepted), else an image with the json's stem beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from yoloslim.data.images import IMG_EXTS, image_size, verify_image
from yoloslim.data.source import Problem, Sample, box_problems
from yoloslim.data.voc import read_names_file
from yoloslim.errors import UserError

BOX_SHAPES = ("rectangle", "polygon", "circle")


@dataclass
class LabelmeRecord:
    """One parsed labelme file, before its labels are matched to class names."""

    json: Path
    image: Path
    width: int
    height: int
    labels: list[str] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    difficult: list[bool] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def shape_box(shape: dict[str, Any]) -> list[float] | None:
    """``[x1, y1, x2, y2]`` of a rectangle, polygon or circle shape; None for other types or bad points."""
    kind = shape.get("shape_type") or "polygon"  # labelme 3 wrote polygons without a type
    try:
        pts = np.asarray(shape.get("points"), dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        return None
    if kind not in BOX_SHAPES or not np.isfinite(pts).all():
        return None
    if kind == "circle":
        if len(pts) != 2:
            return None
        r = float(np.hypot(*(pts[1] - pts[0])))
        (cx, cy) = pts[0]
        return [cx - r, cy - r, cx + r, cy + r]
    if len(pts) < 2 or (kind == "polygon" and len(pts) < 3):
        return None
    return [*pts.min(0).tolist(), *pts.max(0).tolist()]


def parse_labelme(path: Path) -> tuple[LabelmeRecord | None, list[Problem]]:
    """Parse one labelme file: ``(record or None when the sample must be skipped, problems)``."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        return None, [Problem(path, f"not valid JSON ({e.__class__.__name__}: {e})")]
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        return None, [Problem(path, "not a labelme file (no 'shapes' list)")]
    image = _find_image(path, data.get("imagePath"))
    if image is None:
        return None, [Problem(path, f"image {data.get('imagePath') or path.stem + '.*'} not found")]
    bad = verify_image(image)
    size = None if bad else image_size(image)
    if size is None:
        return None, [Problem(image, bad or "corrupt image (cannot read its size)")]
    rec = LabelmeRecord(path, image, *size)
    declared = (data.get("imageWidth"), data.get("imageHeight"))
    if declared not in (size, (None, None)):
        rec.problems.append(Problem(path, f"imageWidth x imageHeight {declared[0]}x{declared[1]} differs from "
                                          f"the image {size[0]}x{size[1]} (the image wins)", skipped=False))
    skipped: dict[str, int] = {}
    for shape in data["shapes"]:
        box = shape_box(shape) if isinstance(shape, dict) else None
        label = str(shape.get("label", "")).strip() if isinstance(shape, dict) else ""
        if box is None or not label:
            kind = str(shape.get("shape_type") or "polygon") if isinstance(shape, dict) else "malformed"
            key = kind if kind not in BOX_SHAPES and label else f"malformed {kind}"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        rec.labels.append(label)
        rec.boxes.append(box)
        rec.difficult.append(bool(shape.get("difficult", False)))
    if skipped:
        listed = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items()))
        rec.problems.append(Problem(path, f"shape(s) without a box: {listed} (skipped)", skipped=False))
    return rec, []


def load_labelme(folder: str | Path, names_file: str | Path | None = None
                 ) -> tuple[list[str], list[Sample], list[Problem]]:
    """Read every labelme file under ``folder``: ``(class names, samples, problems)``.

    Raises:
        UserError: the folder is missing or holds no ``.json`` file, or no label is found and no
            names file given.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder of labelme files")
    files = sorted(folder.rglob("*.json"))
    if not files:
        raise UserError(f"{folder}: no labelme .json files found")
    problems: list[Problem] = []
    records = []
    for f in files:
        rec, bad = parse_labelme(f)
        problems.extend(bad)
        if rec is not None:
            records.append(rec)
    if names_file is not None:
        names = read_names_file(Path(names_file))
    else:
        names = sorted({n for r in records for n in r.labels})
        if not names:
            raise UserError(f"{folder}: no labelled shapes in any labelme file, and no names file")
    index = {n: i for i, n in enumerate(names)}
    samples = []
    for r in records:
        problems.extend(r.problems)
        known = np.array([n in index for n in r.labels], bool)
        unknown = sorted({n for n in r.labels if n not in index})
        if unknown:
            problems.append(Problem(r.json, f"{int((~known).sum())} shape(s) of labels not in names "
                                            f"({', '.join(unknown)}) (dropped)", skipped=False))
        boxes = np.asarray(r.boxes, np.float32).reshape(-1, 4)[known]
        cls = np.asarray([index[n] for n in r.labels if n in index], np.int64)
        diff = np.asarray(r.difficult, bool)[known]
        boxes, keep, more = box_problems(r.json, boxes, r.width, r.height)
        problems.extend(more)
        samples.append(Sample.make(r.image, boxes[keep], cls[keep], r.width, r.height, diff[keep]))
    return names, samples, problems


def write_labelme_json(path: Path, image_name: str, width: int, height: int, labels: list[str],
                       boxes: np.ndarray) -> Path:
    """Write a labelme file with one rectangle per xyxy box (no embedded image data)."""
    shapes = [{"label": n, "points": [[x1, y1], [x2, y2]], "group_id": None, "shape_type": "rectangle",
               "flags": {}} for n, (x1, y1, x2, y2) in zip(labels, np.asarray(boxes).tolist(), strict=True)]
    data = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image_name, "imageData": None,
            "imageHeight": int(height), "imageWidth": int(width)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def _find_image(json_path: Path, image_path: Any) -> Path | None:
    if isinstance(image_path, str) and image_path.strip():
        p = Path(image_path.strip().replace("\\", "/"))
        for cand in (p if p.is_absolute() else json_path.parent / p, json_path.parent / p.name):
            if cand.is_file():
                return cand
    for ext in IMG_EXTS:
        for cand in (json_path.with_suffix(ext), json_path.with_suffix(ext.upper())):
            if cand.is_file():
                return cand
    return None
