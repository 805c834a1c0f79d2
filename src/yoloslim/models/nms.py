"""Batched, class-aware non-maximum suppression in plain torch (no torchvision).

Greedy NMS as YOLOv5 runs it: score = objectness × class probability, one candidate per
(box, class) above ``conf_thres`` (``multi_label``) or the best class only, the ``max_nms`` best
candidates kept, classes separated by offsetting the boxes by ``class × max_wh``, a box suppressed
when its IoU with a kept, higher-scoring box exceeds ``iou_thres``, at most ``max_det`` kept.

The greedy pass walks the score-sorted candidates in blocks: each block is first cleared against
the boxes kept so far (one IoU matrix), then resolved inside itself from its own IoU matrix with
one cheap step per *kept* box. It stops as soon as ``max_det`` boxes are kept, so the cost is
bounded by the blocks it needs, not by the square of the candidate count.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK = 1024  # candidates resolved per IoU block


def xywh2xyxy(x: torch.Tensor) -> torch.Tensor:
    """(n, 4) centre-size boxes to corner boxes."""
    y = torch.empty_like(x)
    half = x[:, 2:4] / 2
    y[:, :2] = x[:, :2] - half
    y[:, 2:] = x[:, :2] + half
    return y


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in ``a`` (n, 4) with every box in ``b`` (m, 4), corners; returns (n, m)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)  # (n, m, 2)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float,
        max_keep: int | None = None) -> torch.Tensor:
    """Greedy NMS on one set of boxes (the same rule as ``torchvision.ops.nms``).

    Args:
        boxes: (n, 4) x1, y1, x2, y2.
        scores: (n,).
        iou_thres: a box is dropped when its IoU with a kept, higher-scoring box is above this.
        max_keep: stop once this many boxes are kept (None: no limit).

    Returns:
        (k,) int64 indices into ``boxes`` of the kept boxes, highest score first. Ties in score keep
        the input order.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    limit = n if max_keep is None else max_keep
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order]
    kept: list[int] = []  # positions in `order`
    for start in range(0, n, BLOCK):
        blk = boxes[start:start + BLOCK]  # (B, 4)
        alive = np.ones(blk.shape[0], dtype=bool)
        if kept:  # clear the block against every box kept so far
            prev = boxes[torch.as_tensor(kept, device=boxes.device)]
            alive &= ~(box_iou(prev, blk) > iou_thres).any(0).cpu().numpy()
        over = (box_iou(blk, blk) > iou_thres).cpu().numpy()  # (B, B)
        for i in np.flatnonzero(alive):
            if not alive[i]:
                continue
            kept.append(start + int(i))
            if len(kept) >= limit:
                return order[torch.as_tensor(kept, device=boxes.device)]
            alive[i + 1:] &= ~over[i, i + 1:]
    return order[torch.as_tensor(kept, device=boxes.device)]


def non_max_suppression(pred: torch.Tensor, conf_thres: float = 0.001, iou_thres: float = 0.6,
                        max_det: int = 300, multi_label: bool = True, agnostic: bool = False,
                        max_wh: int = 7680, max_nms: int = 30000) -> list[torch.Tensor]:
    """Filter decoded predictions to final detections, per image.

    Args:
        pred: (b, N, 5 + nc) decoded rows: cx, cy, w, h (input pixels), objectness, class probabilities.
        conf_thres: minimum score (objectness × class probability) of a candidate.
        iou_thres: IoU above which the lower-scoring box of a class is suppressed.
        max_det: detections kept per image.
        multi_label: one candidate per class above ``conf_thres`` (for mAP); else only the best class.
        agnostic: suppress across classes too.
        max_wh: class offset of the boxes (larger than any image side).
        max_nms: candidates per image that enter NMS, the best by score.

    Returns:
        b tensors (n, 6): x1, y1, x2, y2, score, class — input pixels, highest score first.
    """
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise ValueError(f"conf_thres and iou_thres must be in 0..1, got {conf_thres} and {iou_thres}")
    nc = pred.shape[2] - 5
    multi_label = multi_label and nc > 1
    out = []
    for x in pred:  # (N, 5 + nc)
        x = x[x[:, 4] > conf_thres]
        if not x.shape[0]:
            out.append(torch.zeros((0, 6), device=pred.device, dtype=pred.dtype))
            continue
        scores = x[:, 5:] * x[:, 4:5]  # (n, nc)
        box = xywh2xyxy(x[:, :4])
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=True)
            det = torch.cat((box[i], scores[i, j, None], j[:, None].to(x.dtype)), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            det = torch.cat((box, conf, j.to(x.dtype)), 1)[conf.view(-1) > conf_thres]
        if det.shape[0] > max_nms:
            det = det[torch.sort(det[:, 4], descending=True, stable=True).indices[:max_nms]]
        offset = det[:, 5:6] * (0 if agnostic else max_wh)
        keep = nms(det[:, :4] + offset, det[:, 4], iou_thres, max_keep=max_det)
        out.append(det[keep])
    return out
