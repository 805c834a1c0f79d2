"""Images to recalibrate a pruned model's batch norms on: a data set's train split or unlabelled pictures.

``--calib SOURCE`` names either a data set (a ``data.yaml``, a folder holding one, or a VOC root:
its train split is used, labels ignored) or anything ``predict --source`` reads (an image, a folder
of images, a video). Images are letterboxed exactly as validation letterboxes them, so the batch
norms learn the statistics the model will see at inference.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from yoloslim.data.dataset import letterbox, load_data
from yoloslim.data.images import read_image
from yoloslim.data.source import DataSource
from yoloslim.deploy.sources import open_source
from yoloslim.errors import UserError
from yoloslim.log import logger


@dataclass
class CalibrationImages:
    """An iterable of uint8 RGB ``(b, 3, S, S)`` batches, the loaders' convention.

    Attributes:
        source: the source as the user gave it.
        kind: ``"data set (train split)"`` or ``"images"``.
        imgsz: the letterbox side ``S``.
        limit: at most this many images.
        batch: images per batch.
    """

    source: str
    kind: str
    imgsz: int
    limit: int
    batch: int
    _paths: list[Path] | None = None  # a data set's chosen images; None: read through open_source

    def __iter__(self) -> Iterator[torch.Tensor]:
        frames = self._frames()
        chunk: list[np.ndarray] = []
        count = 0
        for bgr in frames:
            rgb, _ = letterbox(np.ascontiguousarray(bgr[..., ::-1]), self.imgsz)  # (S, S, 3)
            chunk.append(rgb)
            count += 1
            if len(chunk) == self.batch or count == self.limit:
                yield _stack(chunk)
                chunk = []
            if count == self.limit:
                return
        if chunk:
            yield _stack(chunk)

    def _frames(self) -> Iterator[np.ndarray]:
        if self._paths is None:
            yield from (f.img for f in open_source(self.source))
            return
        for path in self._paths:
            img = read_image(path)
            if img is None:
                logger.warning(f"{path}: cannot be decoded as an image; skipped")
                continue
            yield img


def calibration_images(source: str, imgsz: int, limit: int, batch: int = 16, seed: int = 0,
                       loaded: DataSource | None = None) -> CalibrationImages:
    """Resolve ``--calib SOURCE`` into batches of at most ``limit`` letterboxed images.

    A data set contributes a seeded random choice of ``limit`` images of its train split (all of
    them when it has fewer); other sources yield their first ``limit`` images or frames. ``loaded``
    is the data set ``source`` names when the caller has read it already (it is not read again).

    Raises:
        UserError: nothing by that name, a data set without a train split, a non-positive ``limit``.
    """
    if limit < 1:
        raise UserError(f"--calib-images must be at least 1, got {limit}")
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"--calib {source}: no such data set, folder, image or video")
    if not is_data_set(path):
        open_source(str(path)).close()  # fails now, with its clear line, on an empty folder or a bad file
        return CalibrationImages(str(source), "images", imgsz, limit, batch)
    samples = (loaded or load_data(path, warn=False)).splits.get("train") or []
    if not samples:
        raise UserError(f"--calib {source}: the data set has no train split to calibrate on")
    paths = [s.path for s in samples]
    if len(paths) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(paths), limit, replace=False))
        paths = [paths[i] for i in keep]
    return CalibrationImages(str(source), "data set (train split)", imgsz, limit, batch, paths)


def is_data_set(path: Path) -> bool:
    """A ``data.yaml`` (or a folder with one) or a VOC root (``Annotations/`` in it or its subfolders)."""
    if path.is_file():
        return path.suffix.lower() in (".yaml", ".yml")
    if (path / "data.yaml").is_file() or (path / "Annotations").is_dir():
        return True
    return any((p / "Annotations").is_dir() for p in path.iterdir() if p.is_dir())


def _stack(chunk: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).contiguous()  # (b, 3, S, S) uint8
