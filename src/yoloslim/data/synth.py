"""The built-in synthetic detection data set used by the demo, the tests and the benchmarks.

Eight classes (:data:`CLASSES`: circle, square, triangle, star, cross, ring and the letters A and S)
drawn with random size (the box's long side 6 %–55 % of the image), aspect (0.6–1.6), rotation,
colour and fill, on textured, noisy backgrounds with non-class clutter (lines, scribbles, partial
arcs, splats of discs, dots). Objects overlap: a new object may hide part of an older one but never
more than half of what was left of it visible, and every box is the **visible extent** of its object
(the VOC and COCO convention), so an occluded object's box shrinks to what can be seen.

Image ``i`` of a data set is a pure function of ``(seed, i, imgsz)``: the same seed gives the same
bytes, and any subset of the images can be regenerated on its own.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from yoloslim.data.coco import write_coco_json
from yoloslim.data.labelme import write_labelme_json
from yoloslim.data.oxford_hand import SPLIT_DIRS, write_hand_mat
from yoloslim.data.shapes import CLASSES, background, draw_clutter, shape_mask
from yoloslim.data.voc import write_voc_xml
from yoloslim.data.yolo import write_data_yaml, write_labels
from yoloslim.errors import UserError

MIN_SIDE, MAX_SIDE = 0.06, 0.55  # long side of a drawn object, as a fraction of the image
MIN_VISIBLE = 0.5  # an object keeps at least this fraction of its area visible


def render_image(seed: int, index: int, imgsz: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw image ``index`` of the data set with ``seed``.

    Returns:
        ``(img (imgsz, imgsz, 3) uint8 BGR, boxes (n, 4) float32 xyxy pixels, classes (n,) int64)``.
    """
    rng = np.random.default_rng([seed, index, imgsz])
    s = imgsz
    img = background(s, rng)
    draw_clutter(img, rng, int(rng.integers(2, 9)))
    owner = np.full((s, s), -1, np.int16)  # which object each pixel shows
    full_area: list[int] = []
    visible: list[int] = []
    classes: list[int] = []
    n_obj = int(rng.integers(1, 7))
    for _ in range(n_obj):
        for _attempt in range(8):
            cls = int(rng.integers(len(CLASSES)))
            target = float(np.exp(rng.uniform(np.log(MIN_SIDE), np.log(MAX_SIDE)))) * s
            aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
            mask, x0, y0 = shape_mask(CLASSES[cls], target, aspect, rng.uniform(0, 2 * np.pi), rng)
            h, w = mask.shape
            if w >= s or h >= s:
                continue
            px, py = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
            solid = mask > 127
            area = int(solid.sum())
            if area < 8:
                continue
            region = owner[py:py + h, px:px + w]
            hidden = np.bincount(region[solid].astype(np.int64) + 1, minlength=len(full_area) + 1)[1:]
            left = np.asarray(visible, np.int64) - hidden
            if len(full_area) and (left < MIN_VISIBLE * np.asarray(full_area)).any():
                continue
            _paint(img[py:py + h, px:px + w], mask, rng)
            region[solid] = len(full_area)
            visible[:] = left.tolist()
            full_area.append(area)
            visible.append(area)
            classes.append(cls)
            break
    noise = rng.uniform(6, 35)  # uniform sensor noise (cheaper to draw than Gaussian), +/- noise/2
    img += (rng.random((s, s, 3), dtype=np.float32) - 0.5) * noise
    out = img.clip(0, 255).astype(np.uint8)
    if rng.uniform() < 0.25:
        out = cv2.GaussianBlur(out, (3, 3), 0)
    boxes = _visible_boxes(owner, len(classes))
    return out, boxes, np.asarray(classes, np.int64)


def _paint(patch: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    """Blend a coloured object (solid, two-tone gradient or noisy fill) into ``patch`` through ``mask``."""
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    under = (patch * alpha).sum((0, 1)) / max(float(alpha.sum()), 1.0)
    colour = rng.uniform(0, 255, 3).astype(np.float32)
    luma = np.array([0.114, 0.587, 0.299], np.float32)  # BGR
    if abs(float(colour @ luma - under @ luma)) < 60:  # keep the object visible against its background
        colour = colour * 0.3 if float(under @ luma) > 128 else colour * 0.3 + 170
    fill = int(rng.integers(3))
    h, w = mask.shape
    if fill == 0:
        paint = colour
    elif fill == 1:
        other = (colour + rng.uniform(-60, 60, 3)).clip(0, 255).astype(np.float32)
        ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        paint = colour * (1 - ramp) + other * ramp
    else:
        paint = colour + rng.standard_normal((h, w, 1), dtype=np.float32) * rng.uniform(8, 25)
    patch *= 1 - alpha
    patch += alpha * paint


def _visible_boxes(owner: np.ndarray, n: int) -> np.ndarray:
    """Bounding boxes (pixel edges) of the pixels each object still shows."""
    boxes = np.zeros((n, 4), np.float32)
    ys, xs = np.nonzero(owner >= 0)
    ids = owner[ys, xs]
    for k in range(n):
        sel = ids == k
        boxes[k] = xs[sel].min(), ys[sel].min(), xs[sel].max() + 1, ys[sel].max() + 1
    return boxes


def synthesize(out_dir: str | Path, fmt: str = "yolo", images: int = 500, imgsz: int = 320, seed: int = 0,
               val_ratio: float = 0.2, progress: bool = True) -> Path:
    """Write the synthetic data set to ``out_dir``.

    The first ``images - round(images * val_ratio)`` images are the train split, the rest val.

    Args:
        out_dir: folder to write into (created).
        fmt: ``"yolo"`` (``images/``, ``labels/``, ``data.yaml``), ``"voc"`` (``JPEGImages/``,
            ``Annotations/``, ``ImageSets/Main/{train,val}.txt``, ``classes.txt``), ``"coco"``
            (``images/{train,val}/``, ``annotations/instances_{train,val}.json`` and a ``data.yaml``
            pointing at them), ``"labelme"`` (each image with its labelme ``.json`` beside it, one
            folder) or ``"oxford-hand"`` (the Oxford Hand layout, every object a ``hand``; needs scipy).
        images: number of images.
        imgsz: image side in pixels.
        seed: the data set's seed.
        val_ratio: fraction of the images in the val split.
        progress: show a progress bar.

    Returns:
        The ``data.yaml`` path (yolo, coco) or the data set's folder (voc, labelme, oxford-hand).
    """
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if images < 2:
        raise UserError(f"--images must be at least 2, got {images}")
    if not 32 <= imgsz <= 4096:
        raise UserError(f"--imgsz must be between 32 and 4096, got {imgsz}")
    if not 0 < val_ratio < 1:
        raise UserError(f"val ratio must be between 0 and 1, got {val_ratio}")
    out = Path(out_dir)
    n_val = min(images - 1, max(1, round(images * val_ratio)))
    n_train = images - n_val
    names = list(CLASSES)
    ids = {"train": [], "val": []}
    others: dict[str, list[tuple[str, bytes, np.ndarray, np.ndarray]]] = {}
    for i in tqdm(range(images), desc="synthesizing", unit="img", disable=not progress, leave=False):
        split = "train" if i < n_train else "val"
        img, boxes, classes = render_image(seed, i, imgsz)
        stem = f"{i:06d}"
        ids[split].append(stem)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if fmt in OTHER_FORMATS:
            others.setdefault(split, []).append((stem, buf.tobytes(), boxes, classes))
        elif fmt == "yolo":
            (out / "images" / split).mkdir(parents=True, exist_ok=True)
            (out / "images" / split / f"{stem}.jpg").write_bytes(buf.tobytes())
            write_labels(out / "labels" / split / f"{stem}.txt", classes, boxes, imgsz, imgsz)
        else:
            (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
            (out / "JPEGImages" / f"{stem}.jpg").write_bytes(buf.tobytes())
            write_voc_xml(out / "Annotations" / f"{stem}.xml", f"{stem}.jpg", imgsz, imgsz,
                          [names[c] for c in classes], boxes)
    if fmt in OTHER_FORMATS:
        return OTHER_FORMATS[fmt](out, others, imgsz)
    if fmt == "yolo":
        return write_data_yaml(out / "data.yaml", out, {"train": "images/train", "val": "images/val"}, names)
    sets = out / "ImageSets" / "Main"
    sets.mkdir(parents=True, exist_ok=True)
    for split, stems in ids.items():
        (sets / f"{split}.txt").write_text("".join(s + "\n" for s in stems))
    (out / "classes.txt").write_text("".join(n + "\n" for n in names))
    return out


def _write_coco(out: Path, splits: dict[str, list], imgsz: int) -> Path:
    entries = {}
    for split, items in splits.items():
        for stem, data, _, _ in items:
            (out / "images" / split).mkdir(parents=True, exist_ok=True)
            (out / "images" / split / f"{stem}.jpg").write_bytes(data)
        write_coco_json(out / "annotations" / f"instances_{split}.json", list(CLASSES),
                        [(f"{stem}.jpg", imgsz, imgsz, b, c) for stem, _, b, c in items])
        entries[split] = {"annotations": f"annotations/instances_{split}.json", "images": f"images/{split}"}
    return write_data_yaml(out / "data.yaml", out, entries, list(CLASSES))


def _write_labelme(out: Path, splits: dict[str, list], imgsz: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for items in splits.values():
        for stem, data, boxes, classes in items:
            (out / f"{stem}.jpg").write_bytes(data)
            write_labelme_json(out / f"{stem}.json", f"{stem}.jpg", imgsz, imgsz, [CLASSES[c] for c in classes],
                               boxes)
    return out


def _write_oxford_hand(out: Path, splits: dict[str, list], imgsz: int) -> Path:
    for split, items in splits.items():
        folder = out.joinpath(*SPLIT_DIRS[split])
        (folder / "images").mkdir(parents=True, exist_ok=True)
        for stem, data, boxes, _ in items:
            (folder / "images" / f"{stem}.jpg").write_bytes(data)
            corners = [np.array([[y1, x1], [y1, x2], [y2, x2], [y2, x1]]) + 1 for x1, y1, x2, y2 in boxes.tolist()]
            write_hand_mat(folder / "annotations" / f"{stem}.mat", corners)
    return out


# formats written from the rendered images at the end: name -> writer(out, {split: items}, imgsz)
OTHER_FORMATS = {"coco": _write_coco, "labelme": _write_labelme, "oxford-hand": _write_oxford_hand}
FORMATS = ("yolo", "voc", *OTHER_FORMATS)
