"""How well do a model's boxes fit, and do its scores pick its best box? On a data set's val split.

Per ground-truth box, among the same-class detections left by NMS (conf 0.05, IoU 0.6):

- ``best_iou``: the highest IoU any of them reaches (0 when none overlaps): how well the model can
  localize;
- ``top_iou``: the IoU of the highest-scored one among those with IoU >= 0.3 (0 when none): what the
  score ranking keeps. ``best_iou - top_iou`` is what the ranking loses;
- ``spearman``: the rank correlation of score and IoU (to the best-matching box) over every detection
  with IoU >= 0.3.

Session 13 used it to tell whether output distillation hurt YOLOX's boxes or its ranking of them. ::

    python bench/box_quality.py --data W/data/data.yaml --imgsz 192 A.safetensors B.safetensors ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sensitivity_proxy import spearman  # noqa: E402

from yoloslim.data.dataset import DetectionDataset, create_loader, load_data  # noqa: E402
from yoloslim.engine.evaluate import evaluate  # noqa: E402
from yoloslim.models.io import load_model  # noqa: E402
from yoloslim.models.nms import box_iou  # noqa: E402

MIN_OVERLAP = 0.3  # a detection "on" a ground-truth box


def box_quality(weights: str, data: str, imgsz: int, conf: float = 0.05) -> dict[str, float]:
    """``{"best_iou", "top_iou", "spearman", "detections"}`` of the model in ``weights`` on the val split."""
    model, _ = load_model(weights)
    source = load_data(data, warn=False)
    loader = create_loader(DetectionDataset(source.splits["val"], imgsz), batch_size=16, shuffle=False, workers=0)
    result = evaluate(model, loader, source.names, conf=conf, iou=0.6, progress=False)
    best, top, scores, ious = [], [], [], []
    for gt_b, gt_c, _ign, dt_b, dt_s, dt_c in result.detections.images().values():
        if not len(gt_b):
            continue
        same = torch.as_tensor(gt_c)[:, None] == torch.as_tensor(dt_c)[None]
        iou = box_iou(torch.as_tensor(gt_b), torch.as_tensor(dt_b)) * same  # (G, D)
        dt_s = torch.as_tensor(dt_s)
        for row in iou:
            on = row >= MIN_OVERLAP
            best.append(float(row.max()) if len(row) else 0.0)
            top.append(float(row[on][dt_s[on].argmax()]) if on.any() else 0.0)
        if len(dt_b):
            matched = iou.max(0).values
            keep = matched >= MIN_OVERLAP
            scores += dt_s[keep].tolist()
            ious += matched[keep].tolist()
    return {"best_iou": float(np.mean(best)), "top_iou": float(np.mean(top)),
            "spearman": spearman(scores, ious) if len(scores) > 1 else float("nan"), "detections": len(scores)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("weights", nargs="+", help="model files to score")
    p.add_argument("--data", required=True, help="data.yaml whose val split is scored")
    p.add_argument("--imgsz", type=int, default=640)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    print("| model | best IoU | top-scored IoU | lost to ranking | Spearman(score, IoU) | detections |")
    print("|---|---:|---:|---:|---:|---:|")
    for w in a.weights:
        q = box_quality(w, a.data, a.imgsz)
        print(f"| {Path(w).name} | {q['best_iou']:.3f} | {q['top_iou']:.3f} | {q['best_iou'] - q['top_iou']:.3f} "
              f"| {q['spearman']:.3f} | {q['detections']} |")


if __name__ == "__main__":
    main()
