"""Detection data for training and evaluation: ``load_data``, ``DetectionDataset`` and ``create_loader``.

A dataset item is ``(img, targets, path, info)``:

- ``img``: uint8 tensor ``(3, S, S)``, RGB, letterboxed (or augmented) to ``imgsz``;
- ``targets``: float32 ``(n, 6)`` rows ``[0, cls, cx, cy, w, h]`` normalised to 0..1 of ``S`` (ignored
  boxes, VOC ``difficult`` and COCO ``iscrowd``, are no targets);
- ``path``: the image file;
- ``info``: the :class:`LetterboxInfo` of the plain letterbox of that image (exact without
  augmentation, which is how evaluation runs).

Determinism: item ``i`` in epoch ``e`` draws its augmentation from ``default_rng([seed, e, i])``, so
the result does not depend on which worker loads it or on what ran before; call
:meth:`DetectionDataset.set_epoch` at the start of each epoch (the shuffling sampler of
:func:`create_loader` reads the same epoch).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from yoloslim.data.augment import AugmentConfig, flip_lr, flip_ud, hsv_jitter, mixup, mosaic4, random_affine
from yoloslim.data.images import read_image, verify_image
from yoloslim.data.letterbox import LetterboxInfo, letterbox, pad_square, resize_long_side, scale_boxes_back
from yoloslim.data.source import DataSource, Sample, warn_problems
from yoloslim.errors import UserError
from yoloslim.log import logger

__all__ = ["AugmentConfig", "DataSource", "DetectionDataset", "LetterboxInfo", "Sample", "collate",
           "create_loader", "letterbox", "load_data", "scale_boxes_back"]


def load_data(path: str | Path, names_file: str | Path | None = None, warn: bool = True) -> DataSource:
    """Read a data set: a ``data.yaml`` (YOLO txt) or a VOC root (a folder with ``Annotations/``).

    Bad samples are left out; with ``warn`` ONE warning counts and lists them.

    Raises:
        UserError: the path does not exist or is neither kind of data set.
    """
    from yoloslim.data.voc import load_voc
    from yoloslim.data.yolo import load_yolo

    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{p}: no such file or directory (expected a data.yaml or a VOC root)")
    if p.is_file():
        if p.suffix.lower() == ".json":
            raise UserError(f"{p}: a COCO json is named in a data.yaml (val: {{annotations: FILE, images: DIR}}) "
                            "or converted with `yoloslim data convert --coco FILE --images DIR`")
        if p.suffix.lower() not in (".yaml", ".yml"):
            raise UserError(f"{p}: expected a data.yaml or a VOC root folder")
        source = load_yolo(p)
    elif (p / "data.yaml").is_file() and not (p / "Annotations").is_dir():
        source = load_yolo(p / "data.yaml")
    else:
        source = load_voc(p, names_file=names_file)
    if warn:
        warn_problems(source, str(path))
    return source


def _labels(sample: Sample) -> np.ndarray:
    """``(n, 5)`` float32 ``[cls, x1, y1, x2, y2]`` in original pixels, ignored boxes left out.

    Ignored ground truth (VOC ``difficult``, COCO ``iscrowd``) is no target: a crowd box covers many
    objects, and a difficult one is not required of the model. Evaluation still sees it, from the
    samples, as regions where a detection counts neither way; ``data convert`` leaves it out too.
    """
    keep = ~sample.difficult
    return np.hstack([sample.classes[keep, None].astype(np.float32), sample.boxes[keep]]).astype(np.float32)


class DetectionDataset(Dataset):
    """Letterboxed, optionally augmented images with normalised ``[0, cls, cx, cy, w, h]`` targets.

    Args:
        samples: the images and their boxes (e.g. ``load_data(path).splits["train"]``).
        imgsz: output side ``S`` in pixels.
        augment: augmentation strengths; ``None`` for plain letterboxing (evaluation).
        cache: keep every image (resized to long side ``S``) in RAM; workers share it.
        seed: seed of the augmentations.
    """

    def __init__(self, samples: list[Sample], imgsz: int, augment: AugmentConfig | None = None,
                 cache: bool = False, seed: int = 0) -> None:
        if imgsz < 32:
            raise UserError(f"image size must be at least 32, got {imgsz}")
        bad = [(s.path, why) for s in samples if (why := verify_image(Path(s.path)))]
        if bad:
            listed = "\n".join(f"  {p}: {why}" for p, why in bad[:20])
            more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
            logger.warning(f"skipping {len(bad)} of {len(samples)} samples with bad images:\n{listed}{more}")
            skip = {p for p, _ in bad}
            samples = [s for s in samples if s.path not in skip]
        if not samples:
            raise UserError("no usable images in this data set")
        self.samples = list(samples)
        self.labels = [_labels(s) for s in self.samples]
        self.imgsz = imgsz
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._cache: list[np.ndarray | None] | None = None
        if cache:
            self._cache = [self._read(i)[0] for i in tqdm(range(len(self)), desc="caching images",
                                                          unit="img", leave=False)]

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s augmentations (and shuffling order, with :func:`create_loader`)."""
        self.epoch = int(epoch)

    def info(self, i: int) -> LetterboxInfo:
        """The plain letterbox of sample ``i`` (computed from its size, without reading it)."""
        s = self.samples[i]
        r = self.imgsz / max(s.width, s.height)
        nw, nh = max(1, round(s.width * r)), max(1, round(s.height * r))
        return LetterboxInfo(s.height, s.width, r, float(int(round((self.imgsz - nw) / 2 - 0.1))),
                             float(int(round((self.imgsz - nh) / 2 - 0.1))))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str, LetterboxInfo]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        img, labels, i = self._item(i, rng)
        s = self.imgsz
        n = len(labels)
        targets = torch.zeros((n, 6), dtype=torch.float32)
        if n:
            b = labels[:, 1:5]
            targets[:, 1] = torch.from_numpy(labels[:, 0])
            targets[:, 2] = torch.from_numpy((b[:, 0] + b[:, 2]) / 2 / s)
            targets[:, 3] = torch.from_numpy((b[:, 1] + b[:, 3]) / 2 / s)
            targets[:, 4] = torch.from_numpy((b[:, 2] - b[:, 0]) / s)
            targets[:, 5] = torch.from_numpy((b[:, 3] - b[:, 1]) / s)
        chw = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        return torch.from_numpy(chw), targets, str(self.samples[i].path), self.info(i)

    # ---- loading -------------------------------------------------------------------------------

    def _item(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        """The (augmented) BGR ``(S, S, 3)`` image and its ``[cls, x1, y1, x2, y2]`` labels in S pixels."""
        aug = self.augment
        if aug is None:
            img, labels, i = self._plain(i)
            return img, labels, i
        if rng.uniform() < aug.mosaic:
            img, labels, i = self._mosaic(i, rng)
        else:
            img, labels, i = self._plain(i)
            img, labels = random_affine(img, labels, rng, aug.degrees, aug.translate, aug.scale, aug.shear,
                                        aug.perspective)
        if aug.mixup and rng.uniform() < aug.mixup:
            img2, labels2, _ = self._mosaic(int(rng.integers(len(self))), rng)
            img, labels = mixup(img, labels, img2, labels2, rng)
        img = hsv_jitter(img, aug.hsv_h, aug.hsv_s, aug.hsv_v, rng)
        if aug.flipud and rng.uniform() < aug.flipud:
            img, labels = flip_ud(img, labels)
        if aug.fliplr and rng.uniform() < aug.fliplr:
            img, labels = flip_lr(img, labels)
        return img, labels, i

    def _plain(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        img, r, i = self._resized(i)
        out, left, top = pad_square(img, self.imgsz)
        labels = self.labels[i].copy()
        labels[:, 1:5] = labels[:, 1:5] * r + [left, top, left, top]
        return out, labels, i

    def _mosaic(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        idx = [i, *(int(k) for k in rng.integers(0, len(self), 3))]
        imgs, labs = [], []
        for k in idx:
            img, r, k = self._resized(k)
            lab = self.labels[k].copy()
            lab[:, 1:5] *= r
            imgs.append(img)
            labs.append(lab)
        aug = self.augment
        img, labels = mosaic4(imgs, labs, self.imgsz, rng)
        img, labels = random_affine(img, labels, rng, aug.degrees, aug.translate, aug.scale, aug.shear,
                                    aug.perspective, border=-self.imgsz // 2)
        return img, labels, idx[0]

    def _resized(self, i: int) -> tuple[np.ndarray, float, int]:
        """Image ``i`` resized to long side S; an unreadable image is replaced by the next readable one."""
        for k in range(len(self)):
            j = (i + k) % len(self)
            img = self._cache[j] if self._cache is not None else self._read(j)[0]
            if img is not None:
                s = self.samples[j]
                return img, self.imgsz / max(s.width, s.height), j
            logger.warning(f"{self.samples[j].path}: cannot be decoded, using the next image instead")
        raise UserError("no image of this data set can be decoded")

    def _read(self, i: int) -> tuple[np.ndarray | None, float]:
        s = self.samples[i]
        img = read_image(s.path)
        if img is None:
            return None, 0.0
        if img.shape[:2] != (s.height, s.width):  # the annotation's size wins over the file's
            img = cv2.resize(img, (s.width, s.height), interpolation=cv2.INTER_LINEAR)
        return resize_long_side(img, self.imgsz)


class EpochSampler(Sampler[int]):
    """Shuffles with ``default_rng([seed, dataset.epoch])``: the same order for the same epoch, every run."""

    def __init__(self, dataset: DetectionDataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        epoch = getattr(self.dataset, "epoch", 0)
        yield from np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset)).tolist()


def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[str], list[LetterboxInfo]]:
    """Stack images ``(b, 3, S, S)``; concatenate targets ``(N, 6)`` with column 0 = index in the batch."""
    imgs, targets, paths, infos = zip(*batch, strict=False)
    for k, t in enumerate(targets):
        t[:, 0] = k
    return torch.stack(imgs, 0), torch.cat(targets, 0), list(paths), list(infos)


def _worker_init(_: int) -> None:
    cv2.setNumThreads(0)
    torch.set_num_threads(1)


def create_loader(dataset: DetectionDataset, batch_size: int, shuffle: bool, workers: int = 2, seed: int = 0,
                  sampler: Sampler | None = None) -> DataLoader:
    """A DataLoader of ``(imgs uint8 (b, 3, S, S), targets (N, 6), paths, infos)`` batches.

    Args:
        dataset: the dataset.
        batch_size: images per batch.
        shuffle: shuffle with :class:`EpochSampler` (ignored when ``sampler`` is given).
        workers: worker processes (0 loads in the main process); capped at the CPU count.
        seed: seed of the shuffling.
        sampler: e.g. a ``DistributedSampler``.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    if sampler is None and shuffle:
        sampler = EpochSampler(dataset, seed)
    workers = max(0, min(workers, os.cpu_count() or 1, batch_size * 4))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate,
                      worker_init_fn=_worker_init if workers else None, drop_last=False,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())  # pinned: faster copies to a GPU
