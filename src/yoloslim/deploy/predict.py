"""One image in, detections in original-image pixels out: letterbox, preprocess, model, decode, NMS.

The PyTorch model (optionally fused) and an exported ONNX file run through the same pre- and
post-processing: ``letterbox`` and ``scale_boxes_back`` from the data layer, ``preprocess`` and
``Decoder`` from the models, ``non_max_suppression`` from the engine.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from yoloslim.data.dataset import letterbox, scale_boxes_back
from yoloslim.deploy.fuse import fuse_model
from yoloslim.deploy.onnx_export import OnnxModel
from yoloslim.errors import UserError
from yoloslim.models.decode import DecodedModel, preprocess
from yoloslim.models.nms import non_max_suppression
from yoloslim.models.spec import ArchSpec, check_imgsz


@dataclass
class Detections:
    """Final detections of one image.

    Attributes:
        boxes: ``(n, 4)`` float32 x1, y1, x2, y2 in original-image pixels.
        scores: ``(n,)`` float32 confidences (objectness × class probability).
        classes: ``(n,)`` int64 class indices.
        width, height: size of the original image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    width: int
    height: int

    def __len__(self) -> int:
        return len(self.scores)

    def yolo_lines(self) -> list[str]:
        """One ``cls cx cy w h conf`` line per detection, coordinates normalised to the image size."""
        lines = []
        for (x1, y1, x2, y2), s, c in zip(self.boxes, self.scores, self.classes, strict=True):
            cx, cy = (x1 + x2) / 2 / self.width, (y1 + y2) / 2 / self.height
            w, h = (x2 - x1) / self.width, (y2 - y1) / self.height
            lines.append(f"{int(c)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f} {s:.6f}")
        return lines

    def summary(self, names: list[str]) -> str:
        """``2 cat, 1 dog`` (or ``no detections``)."""
        if not len(self):
            return "no detections"
        counts = np.bincount(self.classes, minlength=1)
        return ", ".join(f"{n} {_name(names, c)}" for c, n in enumerate(counts) if n)


@dataclass
class Timing:
    """Milliseconds spent per stage on the last image."""

    pre: float = 0.0
    infer: float = 0.0
    nms: float = 0.0
    totals: dict[str, float] = field(default_factory=lambda: {"pre": 0.0, "infer": 0.0, "nms": 0.0})
    images: int = 0

    def add(self, pre: float, infer: float, nms: float) -> None:
        self.pre, self.infer, self.nms = pre, infer, nms
        for k, v in (("pre", pre), ("infer", infer), ("nms", nms)):
            self.totals[k] += v
        self.images += 1

    def mean(self) -> dict[str, float]:
        return {k: v / max(1, self.images) for k, v in self.totals.items()}


class Predictor:
    """Runs a detector on BGR images and returns :class:`Detections` in original pixels.

    Args:
        model: a yoloslim PyTorch detector (None with ``onnx``); it runs on the device and in the dtype
            of its parameters (e.g. moved to CUDA and ``.half()``).
        onnx: an exported ``.onnx`` file to run in ONNX Runtime instead of PyTorch.
        imgsz: letterbox size (a multiple of the largest stride).
        conf: minimum score.
        iou: NMS IoU threshold.
        max_det: detections kept per image.
        fuse: fold Conv+BN before running (PyTorch backend).
        threads: ONNX Runtime intra-op threads.
    """

    def __init__(self, model: nn.Module | None = None, onnx: str | Path | None = None, imgsz: int = 640,
                 conf: float = 0.25, iou: float = 0.45, max_det: int = 300, fuse: bool = False,
                 threads: int | None = None) -> None:
        if (model is None) == (onnx is None):
            raise ValueError("give exactly one of model and onnx")
        if not 0 <= conf <= 1 or not 0 <= iou <= 1:
            raise UserError(f"--conf and --iou must be in 0..1, got {conf} and {iou}")
        if max_det < 1:
            raise UserError(f"--max-det must be at least 1, got {max_det}")
        self.conf, self.iou, self.max_det, self.imgsz = conf, iou, max_det, imgsz
        self.timing = Timing()
        if model is not None:
            self.spec: ArchSpec = model.spec
            net = fuse_model(model) if fuse else model.eval()
            param = next(net.parameters())
            self._torch = DecodedModel(net).to(param.device).eval()
            self._device, self._dtype = param.device, param.dtype
            self._onnx = None
        else:
            self._onnx = OnnxModel(onnx, threads=threads)
            self.spec = spec_from_onnx_meta(self._onnx.meta, onnx)
            self._torch = None
        check_imgsz(imgsz, self.spec)

    def __call__(self, img_bgr: np.ndarray) -> Detections:
        """Detect objects in one BGR ``(h, w, 3)`` uint8 image."""
        t0 = time.perf_counter()
        lb, info = letterbox(np.ascontiguousarray(img_bgr[..., ::-1]), self.imgsz)  # RGB (S, S, 3)
        x = torch.from_numpy(np.ascontiguousarray(lb.transpose(2, 0, 1)))[None]  # (1, 3, S, S) uint8
        x = preprocess(x, self.spec)
        t1 = time.perf_counter()
        if self._torch is not None:
            with torch.inference_mode():
                pred = self._torch(x.to(self._device, self._dtype))  # (1, N, 5 + nc)
        else:
            pred = self._onnx(x)
        t2 = time.perf_counter()
        det = non_max_suppression(pred.float(), self.conf, self.iou, self.max_det, multi_label=False)[0]
        det = det.cpu().numpy()  # (n, 6) x1, y1, x2, y2, score, class in letterbox pixels
        boxes = scale_boxes_back(det[:, :4], info).astype(np.float32)
        t3 = time.perf_counter()
        self.timing.add((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
        return Detections(boxes, det[:, 4].astype(np.float32), det[:, 5].astype(np.int64), info.orig_w,
                          info.orig_h)


def spec_from_onnx_meta(meta: dict[str, str], path: str | Path) -> ArchSpec:
    """The part of a spec that pre-processing needs, from an exported file's metadata."""
    try:
        return ArchSpec(family=meta["family"], name=meta.get("model", "onnx"), nc=int(meta["nc"]),
                        strides=json.loads(meta["strides"]),
                        options={"input_bgr": meta["input_channels"] == "BGR",
                                 "input_scale": 1.0 if meta["input_range"] == "0..255" else 1 / 255})
    except (KeyError, ValueError) as e:
        raise UserError(f"{path}: not a yoloslim ONNX export (metadata lacks {e}); export it with "
                        "`yoloslim export`") from None


def _name(names: list[str], c: int) -> str:
    return names[c] if 0 <= c < len(names) else str(c)
