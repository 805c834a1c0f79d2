"""IoU variants between paired boxes, as used by the box-regression losses."""

from __future__ import annotations

import math

import torch


def xywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre-size boxes to corner boxes."""
    xy, wh = b[..., :2], b[..., 2:4] / 2
    return torch.cat((xy - wh, xy + wh), -1)


def paired_iou(box1: torch.Tensor, box2: torch.Tensor, xywh: bool = True, kind: str = "ciou",
               eps: float = 1e-7) -> torch.Tensor:
    """IoU of each box in ``box1`` with the box at the same index in ``box2``.

    Args:
        box1: (n, 4) boxes.
        box2: (n, 4) boxes.
        xywh: boxes are ``cx, cy, w, h`` (else ``x1, y1, x2, y2``).
        kind: ``"iou"``, ``"giou"``, ``"diou"`` or ``"ciou"`` (Zheng et al. 2020, arXiv:2005.03572:
            IoU minus the normalised centre distance minus the aspect-ratio consistency term).
        eps: guard against division by zero.

    Returns:
        (n,) IoU values (GIoU/DIoU/CIoU may be negative).
    """
    if kind not in ("iou", "giou", "diou", "ciou"):
        raise ValueError(f"unknown IoU kind {kind!r}")
    if xywh:
        w1, h1 = box1[:, 2], box1[:, 3]
        w2, h2 = box2[:, 2], box2[:, 3]
        box1, box2 = xywh_to_xyxy(box1), xywh_to_xyxy(box2)
    else:
        w1, h1 = box1[:, 2] - box1[:, 0], (box1[:, 3] - box1[:, 1]).clamp(eps)
        w2, h2 = box2[:, 2] - box2[:, 0], (box2[:, 3] - box2[:, 1]).clamp(eps)
    b1x1, b1y1, b1x2, b1y2 = box1.unbind(-1)
    b2x1, b2y1, b2x2, b2y2 = box2.unbind(-1)

    inter = (torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(0) * \
            (torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if kind == "iou":
        return iou

    cw = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)  # enclosing box width
    ch = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)  # and height
    if kind == "giou":
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area
    c2 = cw**2 + ch**2 + eps  # enclosing diagonal squared
    # squared distance between the centres
    rho2 = ((b2x1 + b2x2 - b1x1 - b1x2) ** 2 + (b2y1 + b2y2 - b1y1 - b1y2) ** 2) / 4
    if kind == "diou":
        return iou - rho2 / c2
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)
