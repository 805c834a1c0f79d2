"""The YOLOv8 / YOLO11 loss: task-aligned assignment, CIoU + DFL box loss, BCE classes, outside the model.

The head predicts, at every anchor point (grid cell centre) of every level, the distances from the
point to the box's left, top, right and bottom edges, each as a distribution over ``reg_max`` bins
(0 .. reg_max - 1 strides; the distance is its expectation), and one logit per class (no
objectness). With the anchors assigned by :class:`yoloslim.loss.tal.TaskAlignedAssigner`, whose
soft class targets ``t`` weigh everything, and ``T = max(Σ t, 1)`` over the batch:

- classes: BCE of every anchor's class logits against ``t`` (0 for the background), summed, / T;
- box: ``1 − CIoU`` (Zheng et al. 2020, arXiv:1911.08287) of the decoded box with its gt, weighted
  by the anchor's target score ``Σ_c t``, summed over positives, / T;
- DFL (distribution focal loss, Li et al. 2020, arXiv:2006.04388): the gt distance ``y`` (in
  strides, clipped to ``reg_max − 1.01``) lies between bins ``i = ⌊y⌋`` and ``i + 1``; the loss is
  ``−((i + 1 − y)·log S_i + (y − i)·log S_{i+1})`` with ``S`` the softmax of the side's logits, the
  mean of the four sides, weighted and normalised as the box loss.

Gains ``hyp.box`` (7.5), ``hyp.cls`` (0.5), ``hyp.dfl`` (1.5): the family's defaults in
:data:`yoloslim.hyp.FAMILY_DEFAULTS`, used as given (YOLOv5's scaling by classes, levels and image size
does not apply: :attr:`YOLOv8Loss.SCALE_GAINS`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from yoloslim.loss.iou import paired_iou
from yoloslim.loss.tal import TaskAlignedAssigner, pad_targets
from yoloslim.models.io import unwrap

REG_MAX = 16  # DFL bins per side when the model does not say
ITEMS = ("box", "cls", "dfl")  # the loss items, in the order logged


def reg_max_of(model: nn.Module) -> int:
    """The DFL bins per side of ``model``'s head: the first ``reg_max`` a module of it declares, else 16."""
    for m in unwrap(model).modules():
        r = getattr(m, "reg_max", None)
        if isinstance(r, int) and r > 0:
            return r
    return REG_MAX


def make_anchors(shapes: list[tuple[int, int]], strides: list[int], device: torch.device,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor points (A, 2) ``x, y`` in cells of their level (``grid + 0.5``) and the stride (A,) of each,
    level after level, in the order of the flattened maps."""
    points, stride_out = [], []
    for (h, w), s in zip(shapes, strides, strict=True):
        gy, gx = torch.meshgrid(torch.arange(h, device=device, dtype=dtype) + 0.5,
                                torch.arange(w, device=device, dtype=dtype) + 0.5, indexing="ij")
        points.append(torch.stack((gx, gy), -1).view(-1, 2))
        stride_out.append(torch.full((h * w,), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(stride_out)


def split_maps(raw: list[torch.Tensor], reg_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw maps ``[(b, 4·reg_max + nc, h, w)]`` to DFL logits (b, A, 4, reg_max) and class logits (b, A, nc)."""
    b = raw[0].shape[0]
    y = torch.cat([p.float().flatten(2) for p in raw], 2).permute(0, 2, 1)  # (b, A, 4·reg_max + nc)
    return y[..., :4 * reg_max].reshape(b, -1, 4, reg_max), y[..., 4 * reg_max:]


def dfl_expectation(logits: torch.Tensor) -> torch.Tensor:
    """(..., 4, reg_max) DFL logits to (..., 4) distances in strides: the expectation of each softmax."""
    bins = torch.arange(logits.shape[-1], device=logits.device, dtype=logits.dtype)
    return logits.softmax(-1) @ bins


def distances_to_boxes(ltrb: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(..., 4) ``l, t, r, b`` distances from (..., 2) points to ``x1, y1, x2, y2`` boxes."""
    return torch.cat((points - ltrb[..., :2], points + ltrb[..., 2:]), -1)


def boxes_to_distances(boxes: torch.Tensor, points: torch.Tensor, limit: float) -> torch.Tensor:
    """(..., 4) ``x1, y1, x2, y2`` boxes to ``l, t, r, b`` distances from the points, clipped to 0..limit."""
    return torch.cat((points - boxes[..., :2], boxes[..., 2:] - points), -1).clamp(0, limit)


def dfl_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distribution focal loss of (n, 4, reg_max) logits against (n, 4) distances; (n,) the mean of the sides."""
    left = target.long()
    w_right = target - left
    logp = F.log_softmax(logits, -1)
    nll_left = -logp.gather(-1, left[..., None])[..., 0]
    nll_right = -logp.gather(-1, (left + 1)[..., None])[..., 0]
    return (nll_left * (1 - w_right) + nll_right * w_right).mean(-1)


class YOLOv8Loss:
    """``loss(raw_maps, targets) -> (Σ gains·items × batch size, {"box", "cls", "dfl"})``.

    The items are the per-batch values with their gains applied (they sum to the loss per image).

    Args:
        model: the detector (or its DDP wrapper); ``model.spec`` gives the classes and strides, its head
            the DFL bins (:func:`reg_max_of`).
        hyp: a :class:`yoloslim.hyp.Hyp` (its ``box``, ``cls``, ``dfl`` gains).
    """

    SCALE_GAINS = False  # make_loss passes hyp's gains as they are

    def __init__(self, model: nn.Module, hyp: Any) -> None:
        spec = unwrap(model).spec
        self.nc = spec.nc
        self.strides = [int(s) for s in spec.strides]
        self.reg_max = reg_max_of(model)
        self.gains = {"box": float(hyp.box), "cls": float(hyp.cls), "dfl": float(hyp.dfl)}
        self.assigner = TaskAlignedAssigner(min_size=float(sorted(self.strides)[len(self.strides) // 2]))

    def __call__(self, raw: list[torch.Tensor],
                 targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Args: raw [(b, 4·reg_max + nc, h, w)] per level; targets (N, 6) ``[img, cls, cx, cy, w, h]`` in 0..1."""
        device = raw[0].device
        b = raw[0].shape[0]
        dist_logits, cls_logits = split_maps(raw, self.reg_max)  # (b, A, 4, R), (b, A, nc)
        points, stride = make_anchors([tuple(p.shape[2:]) for p in raw], self.strides, device)  # cells, (A,)
        boxes = distances_to_boxes(dfl_expectation(dist_logits), points)  # (b, A, 4) x1y1x2y2 in cells

        img_h, img_w = raw[0].shape[2] * self.strides[0], raw[0].shape[3] * self.strides[0]
        scale = torch.tensor([img_w, img_h, img_w, img_h], device=device, dtype=torch.float32)
        gt_labels, gt_boxes, gt_mask = pad_targets(targets.to(device=device, dtype=torch.float32), b, scale)
        s = stride[:, None]
        asg = self.assigner(cls_logits.detach().sigmoid(), boxes.detach() * s, points * s,
                            gt_labels, gt_boxes, gt_mask)

        norm = asg.scores.sum().clamp(min=1.0)
        loss_cls = F.binary_cross_entropy_with_logits(cls_logits, asg.scores, reduction="sum") / norm
        fg = asg.fg
        if fg.any():
            weight = asg.scores.sum(-1)[fg]  # (F,)
            target = asg.boxes / s  # (b, A, 4) in cells of the anchor's level
            ciou = paired_iou(boxes[fg], target[fg], xywh=False, kind="ciou")
            loss_box = ((1.0 - ciou) * weight).sum() / norm
            dist = boxes_to_distances(target[fg], points.expand(b, -1, -1)[fg], self.reg_max - 1.01)
            loss_dfl = (dfl_loss(dist_logits[fg], dist) * weight).sum() / norm
        else:
            loss_box = loss_dfl = cls_logits.sum() * 0.0
        items = {"box": loss_box * self.gains["box"], "cls": loss_cls * self.gains["cls"],
                 "dfl": loss_dfl * self.gains["dfl"]}
        total = items["box"] + items["cls"] + items["dfl"]
        return total * b, {k: items[k].detach() for k in ITEMS}
