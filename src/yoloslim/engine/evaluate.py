"""Run a detector over a data loader and score it: COCO mAP, P/R, per class, speed per image.

The same path for every family: ``preprocess`` (the family's input convention), the model's raw
maps, :class:`~yoloslim.models.decode.Decoder`, class-aware NMS, boxes mapped back to original
pixels with the loader's letterbox info. Ground truth comes from the dataset's samples in original
pixels (``difficult`` boxes are ignored, as COCO crowd regions), so resizing never moves it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from yoloslim.data.letterbox import scale_boxes_back
from yoloslim.engine.metrics import DetectionMetrics, MetricsResult
from yoloslim.errors import UserError
from yoloslim.log import logger
from yoloslim.models.decode import Decoder, preprocess
from yoloslim.models.io import unwrap
from yoloslim.models.nms import non_max_suppression


@dataclass
class EvalResult:
    """Metrics, milliseconds per image (``preprocess``, ``inference``, ``nms``), mean loss items, and the
    collected ground truth and detections (image id = index into the loader's samples) for the plots."""

    metrics: MetricsResult
    speed_ms: dict[str, float] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    detections: DetectionMetrics | None = field(default=None, repr=False)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, names: list[str], conf: float = 0.001, iou: float = 0.6,
             max_det: int = 300, device: str | torch.device = "cpu", save_json_dir: str | Path | None = None,
             loss_fn: Any = None, progress: bool = True) -> EvalResult:
    """Evaluate ``model`` on every image of ``loader``.

    Args:
        model: a detector (or a DDP wrapper) whose ``forward`` returns raw head maps.
        loader: a :func:`yoloslim.data.dataset.create_loader` loader of a
            :class:`~yoloslim.data.dataset.DetectionDataset` without augmentation.
        names: class names, one per class of the model.
        conf: NMS confidence threshold.
        iou: NMS IoU threshold.
        max_det: detections kept per image.
        device: where to run the model.
        save_json_dir: also write ``predictions.json`` and ``ground_truth.json`` (COCO) there.
        loss_fn: when given, ``loss_fn(raw_maps, targets) -> (loss, items)`` is averaged over the
            batches into ``losses``.
        progress: show a tqdm bar.

    Returns:
        An :class:`EvalResult`. The model is left in the mode it came in.
    """
    spec = unwrap(model).spec
    if len(names) != spec.nc:
        raise UserError(f"the model has {spec.nc} classes but the data set has {len(names)} "
                        f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
    dataset = loader.dataset
    samples = dataset.samples
    index = {str(s.path): i for i, s in enumerate(samples)}
    device = torch.device(device)
    dtype = next((p.dtype for p in unwrap(model).parameters()), torch.float32)  # float16 after `val --half`
    decoder = Decoder(spec).to(device)
    metrics = DetectionMetrics(names)
    was_training = model.training
    model.eval()
    seconds = np.zeros(3)  # preprocess, inference, nms
    loss_sums: dict[str, float] = {}
    batches = 0
    try:
        size = getattr(dataset, "imgsz", None)
        if size:  # warm-up run: the first call's one-off costs stay out of the timings
            model(preprocess(torch.zeros((1, 3, size, size), dtype=torch.uint8, device=device), spec).to(dtype))
        for imgs, targets, paths, infos in tqdm(loader, desc="val", unit="batch", disable=not progress,
                                                leave=False):
            t0 = _now(device)
            x = preprocess(imgs.to(device, non_blocking=True), spec).to(dtype)  # (b, 3, S, S) float
            t1 = _now(device)
            raw = model(x)
            pred = decoder(raw).float()  # (b, N, 5 + nc)
            t2 = _now(device)
            dets = non_max_suppression(pred, conf_thres=conf, iou_thres=iou, max_det=max_det)
            t3 = _now(device)
            seconds += (t1 - t0, t2 - t1, t3 - t2)
            if loss_fn is not None:
                _, items = loss_fn(raw, targets.to(device))
                for k, v in items.items():
                    loss_sums[k] = loss_sums.get(k, 0.0) + float(v)
            batches += 1
            for det, path, info in zip(dets, paths, infos, strict=True):
                i = index[path]
                if i in metrics:
                    logger.warning(f"{path}: seen twice in one evaluation (an unreadable image replaced?)")
                    continue
                s = samples[i]
                det = det.float().cpu().numpy()
                boxes = scale_boxes_back(det[:, :4], info)
                metrics.add(i, s.boxes, s.classes, s.difficult, boxes, det[:, 4], det[:, 5],
                            width=s.width, height=s.height)
    finally:
        model.train(was_training)
    n = max(len(metrics), 1)
    result = EvalResult(
        metrics=metrics.compute(),
        speed_ms=dict(zip(("preprocess", "inference", "nms"), (seconds * 1000 / n).tolist(), strict=True)),
        losses={k: v / max(batches, 1) for k, v in loss_sums.items()},
        detections=metrics,
    )
    if save_json_dir is not None:
        metrics.write_coco(save_json_dir, [s.path.name for s in samples])
    return result


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
