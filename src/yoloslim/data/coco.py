"""COCO instances json (``images``, ``annotations``, ``categories``) with a folder of images.

Category ids (any integers, gaps allowed) become contiguous class ids in the order of their ids,
with their names kept. ``bbox`` is ``[x, y, w, h]`` in pixels (pixel edges, as yoloslim's boxes).
``iscrowd`` boxes are kept as ignored ground truth (``Sample.difficult``): training leaves them out
and evaluation scores them as COCO does (a detection on one is neither right nor wrong). Images
without annotations are kept as negatives.

A ``data.yaml`` split may name a COCO file instead of an image folder::

    train: {annotations: annotations/instances_train.json, images: train}
    val: annotations/instances_val.json      # images in val/ or images/val/ beside it

What is wrong in the file is reported per image as a :class:`~yoloslim.data.source.Problem`: an
annotation of an unknown category or image id, a malformed ``bbox`` (dropped), a box outside the
image (clipped), a missing or corrupt image (skipped). A file that is not COCO json at all is a
:class:`~yoloslim.errors.UserError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from yoloslim.data.images import image_size, is_image, verify_image
from yoloslim.data.source import Problem, Sample, box_problems
from yoloslim.errors import UserError


@dataclass
class CocoSplit:
    """The samples of one COCO file.

    Attributes:
        names: class names of the file's categories, in the order of their ids.
        samples: readable images, their boxes mapped to ``names`` (or to the names asked for).
        problems: what was wrong and what was done.
        crowd: crowd boxes kept as ignored ground truth.
    """

    names: list[str]
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    crowd: int = 0


def read_coco_json(path: Path) -> dict[str, Any]:
    """The parsed file, checked to be a COCO instances file.

    Raises:
        UserError: missing, not JSON, or without ``images`` / ``categories`` lists.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such COCO annotation file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list):
        raise UserError(f"{path}: not a COCO instances file (needs 'images' and 'categories' lists)")
    if not isinstance(data.get("annotations", []), list):
        raise UserError(f"{path}: 'annotations' must be a list")
    return data


def coco_categories(data: dict[str, Any], path: Path) -> tuple[dict[int, int], list[str]]:
    """``(category id -> class id, names)``: categories sorted by id, numbered 0, 1, ..."""
    cats = {}
    for c in data["categories"]:
        try:
            cats[int(c["id"])] = str(c["name"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: a category without an integer 'id' and a 'name': {c!r}") from None
    if not cats:
        raise UserError(f"{path}: no categories")
    names = [cats[k] for k in sorted(cats)]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"{path}: category name(s) used twice: {', '.join(dup)}")
    return {k: i for i, k in enumerate(sorted(cats))}, names


def load_coco(path: str | Path, images_dir: str | Path, names: list[str] | None = None) -> CocoSplit:
    """Read a COCO instances file whose ``file_name`` s are relative to ``images_dir``.

    Args:
        path: the json file.
        images_dir: the folder of the images.
        names: map categories by name onto these classes (those of other names are dropped and
            reported); default: the file's categories.
    """
    path, images_dir = Path(path), Path(images_dir)
    data = read_coco_json(path)
    if not images_dir.is_dir():
        raise UserError(f"{images_dir}: no such image folder (for {path})")
    cat_index, file_names = coco_categories(data, path)
    out = CocoSplit(names=list(names) if names is not None else file_names)
    wanted = {n: i for i, n in enumerate(out.names)}
    to_class = {cid: wanted.get(file_names[k], -1) for cid, k in cat_index.items()}
    per_image: dict[Any, list[dict[str, Any]]] = {}
    ids = set()
    for im in data["images"]:
        if isinstance(im, dict) and isinstance(im.get("id"), (int, str)):
            ids.add(im["id"])
    stray = 0
    for a in data.get("annotations", []):
        if not isinstance(a, dict) or not isinstance(a.get("image_id"), (int, str)) or a["image_id"] not in ids:
            stray += 1
            continue
        per_image.setdefault(a["image_id"], []).append(a)
    if stray:
        out.problems.append(Problem(path, f"{stray} annotation(s) of an unknown image id (dropped)", skipped=False))
    seen: set[str] = set()
    for im in data["images"]:
        sample, problems = _image_sample(im, per_image, images_dir, path, to_class, seen)
        out.problems.extend(problems)
        if sample is not None:
            out.samples.append(sample)
            out.crowd += int(sample.difficult.sum())
    return out


def _image_sample(im: Any, per_image: dict[Any, list[dict[str, Any]]], images_dir: Path, path: Path,
                  to_class: dict[int, int], seen: set[str]) -> tuple[Sample | None, list[Problem]]:
    """One ``images`` entry and its annotations: ``(sample or None when skipped, problems)``."""
    if not isinstance(im, dict) or not isinstance(im.get("id"), (int, str)) \
            or not isinstance(im.get("file_name"), str):
        return None, [Problem(path, f"an image entry without 'id' and 'file_name': {str(im)[:80]}")]
    img = images_dir / im["file_name"]
    if str(img) in seen:
        return None, [Problem(path, f"image {im['file_name']} listed twice (the first entry is used)")]
    seen.add(str(img))
    bad = verify_image(img)
    size = None if bad else image_size(img)
    if size is None:
        return None, [Problem(img, bad or "corrupt image (cannot read its size)")]
    w, h = size
    problems = []
    if (im.get("width"), im.get("height")) not in ((w, h), (None, None)):
        problems.append(Problem(img, f"the json says {im.get('width')}x{im.get('height')}, the image is "
                                     f"{w}x{h} (the image wins)", skipped=False))
    boxes, classes, crowd = [], [], []
    unknown: set[int] = set()
    n_bad = n_other = 0
    for a in per_image.get(im["id"], []):
        try:
            x, y, bw, bh = (float(v) for v in a["bbox"])
            cid = int(a["category_id"])
        except (KeyError, TypeError, ValueError):
            n_bad += 1
            continue
        if not np.isfinite([x, y, bw, bh]).all() or bw < 0 or bh < 0:
            n_bad += 1
            continue
        if cid not in to_class:
            unknown.add(cid)
            continue
        if to_class[cid] < 0:
            n_other += 1
            continue
        boxes.append([x, y, x + bw, y + bh])
        classes.append(to_class[cid])
        crowd.append(bool(a.get("iscrowd", 0)))
    if unknown:
        problems.append(Problem(img, f"annotation(s) of unknown category id {', '.join(map(str, sorted(unknown)))} "
                                     "(dropped)", skipped=False))
    if n_bad:
        problems.append(Problem(img, f"{n_bad} annotation(s) without a valid bbox [x, y, w, h] (dropped)",
                                skipped=False))
    if n_other:
        problems.append(Problem(img, f"{n_other} annotation(s) of classes not in names (dropped)", skipped=False))
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    b, keep, more = box_problems(img, b, w, h)
    problems.extend(more)
    return Sample.make(img, b[keep], np.asarray(classes, np.int64)[keep], w, h,
                       np.asarray(crowd, bool)[keep]), problems


def coco_split_entry(entry: Any, root: Path, where: str) -> tuple[Path, Path] | None:
    """``(json, image folder)`` when a data.yaml split names a COCO file, else None.

    ``entry`` is ``{annotations: FILE, images: DIR}`` or a path ending in ``.json``; a bare json's
    images are looked for in ``<root>/<split name>``, ``<root>/images/<split name>`` (the split name
    is the file's stem without ``instances_``), then beside the file and in its ``images/``.
    """
    if isinstance(entry, dict):
        unknown = set(entry) - {"annotations", "images"}
        if unknown or "annotations" not in entry or "images" not in entry:
            raise UserError(f"{where}: a COCO split is {{annotations: FILE.json, images: DIR}}, "
                            f"got keys {', '.join(map(str, entry))}")
        return _rooted(entry["annotations"], root), _rooted(entry["images"], root)
    if not isinstance(entry, str) or not entry.lower().endswith(".json"):
        return None
    js = _rooted(entry, root)
    stem = js.stem.removeprefix("instances_")
    for cand in (root / stem, root / "images" / stem, js.parent / stem, js.parent / "images", js.parent):
        if _has_images(cand):
            return js, cand
    raise UserError(f"{where}: no image folder found for {js} (looked for {root / stem} and "
                    f"{root / 'images' / stem}); write the split as {{annotations: FILE, images: DIR}}")


def _rooted(p: Any, root: Path) -> Path:
    q = Path(str(p)).expanduser()
    return q if q.is_absolute() else root / q


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(is_image(p) for p in folder.iterdir() if p.is_file())


def write_coco_json(path: Path, names: list[str], samples: list[tuple[str, int, int, np.ndarray, np.ndarray]],
                    crowd: list[np.ndarray] | None = None) -> Path:
    """Write a COCO instances file: category ids 1.. in ``names`` order; ``samples`` are
    ``(file_name, width, height, boxes xyxy (n, 4), classes (n,))``; ``crowd`` marks iscrowd boxes."""
    images, anns = [], []
    for i, (name, w, h, boxes, classes) in enumerate(samples, 1):
        images.append({"id": i, "file_name": name, "width": int(w), "height": int(h)})
        marks = crowd[i - 1] if crowd is not None else np.zeros(len(classes), bool)
        for (x1, y1, x2, y2), c, m in zip(np.asarray(boxes).tolist(), np.asarray(classes).tolist(), marks,
                                          strict=True):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": int(bool(m))})
    data = {"images": images, "annotations": anns,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path
