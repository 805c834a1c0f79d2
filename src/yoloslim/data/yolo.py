"""YOLO txt data sets: an ultralytics-style ``data.yaml``, ``images/`` and ``labels/`` folders.

``data.yaml`` keys: ``path`` (root; relative to the yaml's folder, else to the working directory, as
ultralytics does), ``train``, ``val``, optional ``test`` (each a folder, a ``.txt`` list of images, an
image, or a list of those, relative to ``path``), ``names`` (a list, or a dict ``{index: name}``) and
optional ``nc``. Other keys (``download``, ...) are ignored. A split may also name a COCO instances
file and its image folder (see :mod:`yoloslim.data.coco`); without ``names``, the classes are then
the categories of the first such file. The label of ``.../images/x/a.jpg`` is
``.../labels/x/a.txt``: one ``class cx cy w h`` line per object, normalised to 0..1; an empty or
missing label file is a background image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from yoloslim.data.coco import coco_categories, coco_split_entry, load_coco, read_coco_json
from yoloslim.data.images import image_size, is_image, list_images, verify_image
from yoloslim.data.source import SPLITS, DataSource, Problem, Sample, box_problems
from yoloslim.errors import UserError
from yoloslim.safe_parse import load_yaml_file, yaml_error_reason


def load_yolo(yaml_path: str | Path) -> DataSource:
    """Read the data set a ``data.yaml`` describes.

    Samples whose image is missing, corrupt or truncated, or whose label file is malformed (wrong
    number of columns, text that is not a number, a class not in ``names``, coordinates that are not
    normalised) are left out and recorded in ``problems``; boxes partly outside the image are clipped
    and boxes of zero area dropped (recorded, sample kept).

    Raises:
        UserError: the yaml is missing, not a mapping, lacks ``train``/``val``/``names``, or points to
            paths that do not exist.
    """
    yaml_path = Path(yaml_path)
    cfg = _read_yaml(yaml_path)
    root = _resolve_root(cfg, yaml_path)
    coco = {split: coco_split_entry(cfg.get(split), root, f"{yaml_path}: {split}") for split in SPLITS}
    first = next((c for c in coco.values() if c is not None), None)
    if cfg.get("names") is None and cfg.get("nc") is None and first is not None:
        names = coco_categories(read_coco_json(first[0]), first[0])[1]
    else:
        names = parse_names(cfg, yaml_path)
    source = DataSource(names=names, splits={}, root=root, fmt="coco" if first else "yolo")
    for split in SPLITS:
        entry = cfg.get(split)
        if entry in (None, "", []):
            continue
        if coco[split] is not None:
            part = load_coco(*coco[split], names=names)
            source.problems.extend(part.problems)
            source.splits[split] = part.samples
            source.backgrounds[split] = sum(len(s.classes) == 0 for s in part.samples)
            continue
        images = _split_images(entry, root, f"{yaml_path}: {split}")
        samples, n_bg = [], 0
        for img in images:
            sample, problems = read_labelled_image(img, len(names))
            source.problems.extend(problems)
            if sample is not None:
                samples.append(sample)
                n_bg += len(sample.classes) == 0
        source.splits[split] = samples
        source.backgrounds[split] = n_bg
    return source


def label_path(image: Path) -> Path:
    """The label file of an image: the last ``/images/`` of its path becomes ``/labels/``, suffix ``.txt``."""
    s = str(image)
    a, b = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if a in s:
        head, tail = s.rsplit(a, 1)
        s = head + b + tail
    return Path(s).with_suffix(".txt")


def read_labelled_image(img: Path, nc: int) -> tuple[Sample | None, list[Problem]]:
    """One image and its label file: ``(sample or None when it must be skipped, problems)``."""
    bad = verify_image(img)
    if bad:
        return None, [Problem(img, bad)]
    size = image_size(img)
    if size is None:
        return None, [Problem(img, "corrupt image (cannot read its size)")]
    w, h = size
    lbl = label_path(img)
    if not lbl.is_file():
        return Sample.make(img, [], [], w, h), []
    rows, error = parse_label_file(lbl, nc)
    if error:
        return None, [Problem(lbl, error)]
    cls = rows[:, 0].astype(np.int64)
    cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    boxes, keep, problems = box_problems(lbl, boxes, w, h)
    return Sample.make(img, boxes[keep], cls[keep], w, h), problems


def parse_label_file(path: Path, nc: int) -> tuple[np.ndarray, str | None]:
    """``(rows (n, 5) float32 [cls, cx, cy, w, h], None)`` or ``(empty, what is wrong)``."""
    empty = np.zeros((0, 5), np.float32)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        return empty, f"unreadable label file ({e.__class__.__name__})"
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            return empty, f"line {i} has {len(parts)} columns, expected 5 (class cx cy w h)"
        try:
            values = [float(v) for v in parts]
        except ValueError:
            return empty, f"line {i} is not five numbers: {line.strip()!r}"
        if not np.isfinite(values).all():
            return empty, f"line {i} has a value that is not finite"
        c = values[0]
        if c != int(c) or not 0 <= c < nc:
            return empty, f"line {i}: class {parts[0]} not in names (0..{nc - 1})"
        if max(values[1:]) > 1.5 or min(values[3:]) < 0:
            return empty, f"line {i}: coordinates are not normalised to 0..1: {line.strip()!r}"
        rows.append(values)
    return (np.array(rows, np.float32) if rows else empty), None


def write_labels(path: Path, classes: np.ndarray, boxes: np.ndarray, width: int, height: int) -> None:
    """Write ``class cx cy w h`` lines (normalised) for xyxy pixel ``boxes``; an empty file for none."""
    lines = []
    for c, (x1, y1, x2, y2) in zip(classes, boxes, strict=False):
        lines.append(f"{int(c)} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def write_data_yaml(path: Path, root: Path, splits: dict[str, str], names: list[str]) -> Path:
    """Write an ultralytics-style ``data.yaml`` (names as a list) and return its path.

    A ``root`` that is the yaml's own folder is left out (it is the default), so a copied or moved
    folder reads its own files; any other root is written as an absolute ``path``.
    """
    same = Path(root).resolve() == Path(path).parent.resolve()
    data: dict[str, Any] = {} if same else {"path": str(Path(root).resolve())}
    data.update(splits)
    data["nc"] = len(names)
    data["names"] = list(names)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def parse_names(cfg: dict[str, Any], where: Path) -> list[str]:
    """Class names from ``names`` (list or ``{index: name}``), checked against ``nc`` when given."""
    names = cfg.get("names")
    nc = cfg.get("nc")
    if names is None:
        if isinstance(nc, int) and nc > 0:
            return [f"class{i}" for i in range(nc)]
        raise UserError(f"{where}: missing key 'names' (a list of class names)")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise UserError(f"{where}: 'names' keys must be class indices 0, 1, ...") from None
        if keys != list(range(len(keys))):
            raise UserError(f"{where}: 'names' indices must be 0..{len(keys) - 1} without gaps")
        names = [names[k] if k in names else names[str(k)] for k in keys]
    if not isinstance(names, list) or not names:
        raise UserError(f"{where}: 'names' must be a non-empty list or an index: name mapping")
    if nc is not None and nc != len(names):
        raise UserError(f"{where}: nc is {nc} but 'names' has {len(names)} entries")
    return [str(n) for n in names]


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: no such data file")
    try:
        cfg = load_yaml_file(path)
    except (yaml.YAMLError, OSError) as e:
        raise UserError(f"{path}: not valid YAML ({yaml_error_reason(e)})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a mapping with train, val and names")
    for key in ("train", "val"):
        if cfg.get(key) in (None, "", []):
            raise UserError(f"{path}: missing key '{key}' (data.yaml needs train, val and names)")
    return cfg


def _resolve_root(cfg: dict[str, Any], yaml_path: Path) -> Path:
    raw = cfg.get("path")
    if raw in (None, ""):
        return yaml_path.parent.resolve()
    p = Path(str(raw)).expanduser()
    if p.is_absolute():
        if not p.is_dir():
            raise UserError(f"{yaml_path}: path {p} does not exist")
        return p
    first = _first_entry(cfg.get("train"))
    candidates = [(yaml_path.parent / p).resolve(), (Path.cwd() / p).resolve()]
    for c in candidates:  # the one where train is found, else the first that exists
        if c.is_dir() and (first is None or (c / first).exists()):
            return c
    for c in candidates:
        if c.is_dir():
            return c
    raise UserError(f"{yaml_path}: path {raw} does not exist (looked in {candidates[0]} and {candidates[1]})")


def _first_entry(entry: Any) -> str | None:
    if isinstance(entry, list):
        return str(entry[0]) if entry else None
    return None if entry is None else str(entry)


def _split_images(entry: Any, root: Path, where: str) -> list[Path]:
    items = entry if isinstance(entry, list) else [entry]
    out: list[Path] = []
    for item in items:
        p = Path(str(item)).expanduser()
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            out.extend(list_images(p))
        elif p.is_file() and p.suffix.lower() == ".txt":
            for line in p.read_text().splitlines():
                line = line.strip()
                if line:
                    q = Path(line)
                    out.append(q if q.is_absolute() else (p.parent / q).resolve())
        elif p.is_file() and is_image(p):
            out.append(p)
        else:
            raise UserError(f"{where}: {p} does not exist (expected a folder, a .txt list or an image)")
    return out
