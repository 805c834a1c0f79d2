"""``val_batch0_labels.jpg`` and ``val_batch0_pred.jpg``: the first validation images in a grid, once
with their ground truth and once with the model's detections, tile for tile in the same places."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from yoloslim.data.images import read_image
from yoloslim.data.letterbox import letterbox
from yoloslim.data.source import Sample
from yoloslim.deploy.draw import draw_detections
from yoloslim.engine.metrics import DetectionMetrics
from yoloslim.errors import UserError
from yoloslim.models.io import atomic_write

MAX_IMAGES = 16
TILE = 320  # pixels per tile side
CONF = 0.25  # detections drawn: YOLOv5's plotting threshold


def mosaic(tiles: Sequence[np.ndarray], tile: int = TILE) -> np.ndarray:
    """Square BGR tiles in a near-square grid on white, one-pixel white lines between them."""
    cols = max(math.ceil(math.sqrt(len(tiles))), 1)
    rows = max(math.ceil(len(tiles) / cols), 1)
    out = np.full((rows * (tile + 1) + 1, cols * (tile + 1) + 1, 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        out[1 + r * (tile + 1):1 + r * (tile + 1) + tile, 1 + c * (tile + 1):1 + c * (tile + 1) + tile] = t
    return out


def write_val_images(detections: DetectionMetrics, samples: Sequence[Sample], out_dir: str | Path,
                     max_images: int = MAX_IMAGES, conf: float = CONF, tile: int = TILE) -> dict[str, Any]:
    """Draw the first ``max_images`` evaluated images (ids index ``samples``) with ground truth and with
    the detections of at least ``conf``; write the two JPEGs into ``out_dir``.

    Returns:
        ``{"labels": path, "pred": path, "images": [file names], "boxes": [n ground truth per image],
        "detections": [n drawn per image]}``.
    """
    names = detections.names
    gts, preds, files, n_gt, n_det = [], [], [], [], []
    for i, (gt_b, gt_c, _ign, dt_b, dt_s, dt_c) in list(detections.images().items())[:max_images]:
        s = samples[i]
        img = read_image(s.path)
        if img is None:
            continue
        keep = dt_s >= conf
        boxed, info = letterbox(img, tile)  # (tile, tile, 3)

        def to_tile(b: np.ndarray, info: Any = info) -> np.ndarray:
            return b * info.ratio + np.array([info.pad_w, info.pad_h] * 2)

        gts.append(draw_detections(boxed, to_tile(gt_b), None, gt_c, names))
        preds.append(draw_detections(boxed, to_tile(dt_b[keep]), dt_s[keep], dt_c[keep], names))
        files.append(s.path.name)
        n_gt.append(len(gt_c))
        n_det.append(int(keep.sum()))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, tiles in (("labels", gts), ("pred", preds)):
        path = out / f"val_batch0_{key}.jpg"
        ok, buf = cv2.imencode(".jpg", mosaic(tiles, tile), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise UserError(f"{path}: could not encode the JPEG")
        atomic_write(path, lambda tmp, buf=buf: Path(tmp).write_bytes(buf.tobytes()))
        paths[key] = path
    return {**paths, "images": files, "boxes": n_gt, "detections": n_det}
