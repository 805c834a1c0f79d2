"""Letterbox, augmentations and the loader: shapes, dtypes, boxes inside the image, determinism."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from yoloslim.data.augment import AugmentConfig, flip_lr, flip_ud, mosaic4, random_affine
from yoloslim.data.dataset import DetectionDataset, create_loader, load_data
from yoloslim.data.letterbox import letterbox, scale_boxes_back
from yoloslim.data.source import Sample

STRONG = AugmentConfig(degrees=20, translate=0.2, scale=0.6, shear=5, perspective=0.0005, flipud=0.5,
                       fliplr=0.5, mosaic=0.7, mixup=0.5)


def _train(tiny_data: Path) -> list[Sample]:
    return load_data(tiny_data).splits["train"]


def test_item_shapes_and_dtypes(tiny_data: Path) -> None:
    ds = DetectionDataset(_train(tiny_data), 64, augment=None)
    img, targets, path, info = ds[0]
    assert img.shape == (3, 64, 64) and img.dtype == torch.uint8
    assert targets.dtype == torch.float32 and targets.shape[1] == 6 and len(targets) >= 1
    assert Path(path).is_file() and info.orig_w == 96 and abs(info.ratio - 64 / 96) < 1e-9
    s = ds.samples[0]
    b = s.boxes
    expect = np.hstack([b[:, :2] + b[:, 2:], b[:, 2:] - b[:, :2]]) / [192, 192, 96, 96]
    assert np.allclose(targets[:, 2:].numpy(), expect, atol=1e-5)
    assert np.array_equal(targets[:, 1].numpy(), s.classes)


def test_letterbox_non_square_and_back(tmp_path: Path) -> None:
    img = np.zeros((60, 100, 3), np.uint8)
    out, info = letterbox(img, 64)
    assert out.shape == (64, 64, 3) and info.orig_h == 60 and info.orig_w == 100
    assert info.ratio == 0.64 and info.pad_w == 0 and info.pad_h == 13
    assert (out[:13] == 114).all() and (out[13:51] == 0).all() and (out[51:] == 114).all()
    boxes = np.array([[10, 5, 90, 55], [0, 0, 100, 60]], np.float32)
    lb = boxes * info.ratio + [info.pad_w, info.pad_h, info.pad_w, info.pad_h]
    assert np.allclose(scale_boxes_back(lb, info), boxes, atol=1e-4)
    assert torch.allclose(scale_boxes_back(torch.tensor(lb).float(), info), torch.tensor(boxes), atol=1e-4)
    outside = scale_boxes_back(np.array([[-10, 0, 70, 70]], np.float32), info)
    assert outside.min() >= 0 and outside[0, 2] <= 100 and outside[0, 3] <= 60


def test_non_square_png_sample(tmp_path: Path) -> None:
    p = tmp_path / "wide.PNG"
    cv2.imwrite(str(p), np.full((50, 120, 3), 200, np.uint8))
    ds = DetectionDataset([Sample.make(p, [[20, 10, 60, 40]], [1], 120, 50)], 64)
    img, t, _, info = ds[0]
    assert img.shape == (3, 64, 64) and info.pad_h > 0
    box = (t[0, 2:] * 64).numpy()
    xyxy = np.array([box[0] - box[2] / 2, box[1] - box[3] / 2, box[0] + box[2] / 2, box[1] + box[3] / 2])
    assert np.allclose(scale_boxes_back(xyxy[None], info)[0], [20, 10, 60, 40], atol=1.0)


def test_augmentation_keeps_boxes_inside(tiny_data: Path) -> None:
    ds = DetectionDataset(_train(tiny_data), 64, augment=STRONG, seed=1)
    n_boxes = 0
    for e in range(2):
        ds.set_epoch(e)
        for i in range(len(ds)):
            img, t, _, _ = ds[i]
            assert img.shape == (3, 64, 64) and img.dtype == torch.uint8
            cx, cy, w, h = t[:, 2:].T
            assert (w > 0).all() and (h > 0).all()
            assert (cx - w / 2 >= -1e-5).all() and (cx + w / 2 <= 1 + 1e-5).all()
            assert (cy - h / 2 >= -1e-5).all() and (cy + h / 2 <= 1 + 1e-5).all()
            assert ((t[:, 1] >= 0) & (t[:, 1] < 8)).all()
            n_boxes += len(t)
    assert n_boxes > 2 * len(ds)  # augmentation keeps most boxes


def test_deterministic_by_seed_and_epoch(tiny_data: Path) -> None:
    a = DetectionDataset(_train(tiny_data), 64, augment=STRONG, seed=5)
    b = DetectionDataset(_train(tiny_data), 64, augment=STRONG, seed=5, cache=True)
    for i in (0, 3, 7):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
    first = a[3][0]
    a.set_epoch(1)
    assert not torch.equal(a[3][0], first)
    a.set_epoch(0)
    assert torch.equal(a[3][0], first)


def test_loader_batches_same_with_and_without_workers(tiny_data: Path) -> None:
    ds = DetectionDataset(_train(tiny_data), 64, augment=AugmentConfig(), seed=2)
    ds.set_epoch(3)
    runs = []
    for workers in (0, 2):
        batches = list(create_loader(ds, 4, shuffle=True, workers=workers, seed=9))
        runs.append(batches)
    assert len(runs[0]) == 4
    for (i0, t0, p0, f0), (i1, t1, p1, f1) in zip(*runs, strict=False):
        assert i0.shape == (4, 3, 64, 64) and i0.dtype == torch.uint8
        assert torch.equal(i0, i1) and torch.equal(t0, t1) and p0 == p1 and f0 == f1
        assert set(t0[:, 0].long().tolist()) <= {0, 1, 2, 3}
    order = [p for b in runs[0] for p in b[2]]
    assert sorted(order) == sorted(str(s.path) for s in ds.samples) and order != sorted(order)


def test_pure_augmentations() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    lab = np.array([[2, 5, 6, 20, 30], [1, 30, 0, 60, 40]], np.float32)
    i2, l2 = flip_lr(*flip_lr(img, lab))
    assert np.array_equal(i2, img) and np.allclose(l2, lab)
    i3, l3 = flip_ud(img, lab)
    assert np.allclose(l3[0], [2, 5, 10, 20, 34]) and np.array_equal(i3[0], img[-1])
    same, ls = random_affine(img, lab, rng, degrees=0, translate=0, scale=0)
    assert np.array_equal(same, img) and np.allclose(ls, lab, atol=1e-4)
    canvas, lm = mosaic4([img] * 4, [lab] * 4, 60, rng)
    assert canvas.shape == (120, 120, 3) and len(lm) >= 4
    assert (lm[:, 1:] >= 0).all() and (lm[:, 1:] <= 120).all()
    out, lo = random_affine(canvas, lm, rng, border=-30)
    assert out.shape == (60, 60, 3) and ((lo[:, 1:] >= 0) & (lo[:, 1:] <= 60)).all()
