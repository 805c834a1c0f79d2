"""The YOLOX loss with SimOTA label assignment (Ge et al. 2021, arXiv:2107.08430), outside the model.

Every grid cell of every level is one prior. Per image, SimOTA picks the priors each ground-truth
box learns from:

1. centre prior: candidates are priors whose cell centre lies inside a gt box or within
   ``2.5 · stride`` of a gt centre;
2. cost of (gt, candidate) = class BCE of ``sqrt(σ(cls)·σ(obj))`` against the one-hot class
   ``+ 3 · (−log IoU)`` ``+ 1e5`` unless the candidate is both in the box and in the centre region;
3. dynamic k per gt = the sum of its 10 best IoUs (at least 1); the gt takes its k cheapest
   candidates; a prior taken by several gts keeps the cheapest gt.

Losses, each summed and divided by the number of matched priors in the batch: IoU loss
``1 − IoU²`` of the decoded boxes (weight 5), BCE of objectness on every prior (target: matched),
BCE of classes on matched priors (target: one-hot × IoU), and, when ``use_l1`` is set (the last
epochs), L1 between the raw regression outputs and the encoded targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from yoloslim.models.io import unwrap

CENTER_RADIUS = 2.5  # in strides
TOPK_IOU = 10  # candidates whose IoUs sum to dynamic k
COST_IOU = 3.0
COST_OUTSIDE = 1e5
REG_WEIGHT = 5.0
LR_BATCH = 64  # the official learning rate is "0.01 per 64 images" on the batch loss


@dataclass
class Assignment:
    """SimOTA's result for one image.

    Attributes:
        fg: (A,) bool, priors that learn from a gt.
        gt_index: (F,) the gt of each foreground prior, in prior order.
        iou: (F,) IoU of each foreground prior's predicted box with its gt.
    """

    fg: torch.Tensor
    gt_index: torch.Tensor
    iou: torch.Tensor


def pairwise_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """IoU of every box in ``a`` (n, 4) with every box in ``b`` (m, 4), both ``cx, cy, w, h``; (n, m)."""
    tl = torch.max(a[:, None, :2] - a[:, None, 2:] / 2, b[None, :, :2] - b[None, :, 2:] / 2)
    br = torch.min(a[:, None, :2] + a[:, None, 2:] / 2, b[None, :, :2] + b[None, :, 2:] / 2)
    inter = (br - tl).clamp(min=0).prod(2)
    return inter / (a[:, None, 2:].prod(2) + b[None, :, 2:].prod(2) - inter).clamp(min=eps)


def paired_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-16) -> torch.Tensor:
    """IoU of box ``i`` of ``a`` with box ``i`` of ``b``, both (n, 4) ``cx, cy, w, h``; (n,)."""
    tl = torch.max(a[:, :2] - a[:, 2:] / 2, b[:, :2] - b[:, 2:] / 2)
    br = torch.min(a[:, :2] + a[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2)
    inter = (br - tl).clamp(min=0).prod(1)
    return inter / (a[:, 2:].prod(1) + b[:, 2:].prod(1) - inter + eps)


@torch.no_grad()
def simota_assign(boxes: torch.Tensor, obj: torch.Tensor, cls: torch.Tensor, centers: torch.Tensor,
                  strides: torch.Tensor, gt_boxes: torch.Tensor, gt_cls: torch.Tensor) -> Assignment:
    """SimOTA label assignment for one image.

    Args:
        boxes: (A, 4) predicted boxes ``cx, cy, w, h`` in pixels, one per prior.
        obj: (A,) objectness logits.
        cls: (A, nc) class logits.
        centers: (A, 2) centre of each prior's cell in pixels (``(grid + 0.5) · stride``).
        strides: (A,) stride of each prior's level.
        gt_boxes: (G, 4) ground truth ``cx, cy, w, h`` in pixels, G ≥ 1.
        gt_cls: (G,) class indices.

    Returns:
        The :class:`Assignment`.
    """
    a, nc = cls.shape
    boxes, obj, cls = boxes.float(), obj.float(), cls.float()
    gt_boxes = gt_boxes.float()
    d_box = torch.cat((centers[None] - (gt_boxes[:, None, :2] - gt_boxes[:, None, 2:] / 2),
                       (gt_boxes[:, None, :2] + gt_boxes[:, None, 2:] / 2) - centers[None]), 2)  # (G, A, 4)
    in_box = d_box.amin(2) > 0  # (G, A)
    radius = CENTER_RADIUS * strides[None, :, None]  # (1, A, 1)
    in_center = ((centers[None] - gt_boxes[:, None, :2]).abs() < radius).all(2)  # (G, A)
    cand = in_box.any(0) | in_center.any(0)  # (A,)
    fg = torch.zeros(a, dtype=torch.bool, device=boxes.device)
    if not cand.any():
        return Assignment(fg, torch.zeros(0, dtype=torch.long, device=boxes.device), boxes.new_zeros(0))
    both = in_box[:, cand] & in_center[:, cand]  # (G, C)
    ious = pairwise_iou(gt_boxes, boxes[cand])  # (G, C)
    p = (cls[cand].sigmoid() * obj[cand, None].sigmoid()).sqrt()  # (C, nc)
    onehot = F.one_hot(gt_cls.long(), nc).float()  # (G, nc)
    cls_cost = F.binary_cross_entropy(p[None].expand(len(gt_boxes), -1, -1),
                                      onehot[:, None].expand(-1, p.shape[0], -1), reduction="none").sum(2)
    cost = cls_cost + COST_IOU * -torch.log(ious + 1e-8) + COST_OUTSIDE * (~both)  # (G, C)

    c = ious.shape[1]
    ks = ious.topk(min(TOPK_IOU, c), dim=1).values.sum(1).int().clamp(min=1)  # (G,) dynamic k
    order = cost.argsort(1)  # cheapest first
    take = torch.arange(c, device=cost.device)[None] < ks[:, None]  # (G, C) by rank
    match = torch.zeros_like(cost, dtype=torch.bool).scatter_(1, order, take)  # (G, C)
    multi = match.sum(0) > 1
    if multi.any():  # a prior claimed by several gts keeps the cheapest
        cheapest = cost[:, multi].argmin(0)
        match[:, multi] = False
        match[cheapest, multi.nonzero(as_tuple=True)[0]] = True
    matched = match.any(0)  # (C,)
    fg[cand] = matched
    gt_index = match[:, matched].float().argmax(0)  # (F,)
    iou = ious[:, matched][gt_index, torch.arange(len(gt_index), device=cost.device)]
    return Assignment(fg, gt_index, iou)


def priors(shapes: list[tuple[int, int]], strides: list[int], device: torch.device,
           dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid offsets (A, 2) ``x, y`` in cells and the stride (A,) of every prior, level after level."""
    grids, strides_out = [], []
    for (h, w), s in zip(shapes, strides, strict=True):
        gy, gx = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                                torch.arange(w, device=device, dtype=dtype), indexing="ij")
        grids.append(torch.stack((gx, gy), -1).view(-1, 2))
        strides_out.append(torch.full((h * w,), float(s), device=device, dtype=dtype))
    return torch.cat(grids), torch.cat(strides_out)


class YOLOXLoss:
    """``loss(raw_maps, targets) -> (official loss × batch size / 64, {"iou", "obj", "cls", "l1"})``.

    The weights are the official ones (IoU 5, objectness 1, classes 1, L1 1); the YOLOv5 gains of
    ``hyp`` do not apply. The items are the official per-batch values (each normalised by the
    number of matched priors). ``use_l1`` switches the L1 term on (the official recipe does it for
    the final no-augmentation epochs).

    Scale: the shared loop sums ``loss`` over a nominal batch (the registry's "loss × batch size")
    at ``lr0``; the official recipe steps ``0.01 · batch / 64`` on the batch loss. Returning the
    batch loss × batch / 64 makes the default ``lr0 = 0.01`` take the official step for any batch
    size, so YOLOX trains with the default hyp. (Without the 1/64 the gradients are ~64 times the
    official ones and the loop's gradient clipping at norm 10 is always on.)

    Args:
        model: the detector (or its DDP wrapper); ``model.spec`` gives classes and strides.
        hyp: accepted for the registry's signature; unused.
    """

    def __init__(self, model: nn.Module, hyp: Any = None) -> None:
        spec = unwrap(model).spec
        self.nc = spec.nc
        self.strides = [int(s) for s in spec.strides]
        self.use_l1 = False

    def set_no_aug(self, on: bool = True) -> None:
        """Enter (or leave) the final no-augmentation phase: the L1 term is on during it."""
        self.use_l1 = bool(on)

    def __call__(self, raw: list[torch.Tensor],
                 targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Args: raw [(b, 4+1+nc, h, w)] per level; targets (N, 6) ``[img, cls, cx, cy, w, h]`` in 0..1."""
        device = raw[0].device
        bs = raw[0].shape[0]
        pred = torch.cat([p.float().flatten(2) for p in raw], 2).permute(0, 2, 1)  # (b, A, 5+nc)
        grid, stride = priors([tuple(p.shape[2:]) for p in raw], self.strides, device)  # (A, 2), (A,)
        boxes = torch.cat(((pred[..., :2] + grid) * stride[:, None],
                           pred[..., 2:4].exp() * stride[:, None]), -1)  # (b, A, 4) pixels
        img_h, img_w = raw[0].shape[2] * self.strides[0], raw[0].shape[3] * self.strides[0]
        targets = targets.to(device=device, dtype=torch.float32)
        gt_all = targets[:, 2:6] * torch.tensor([img_w, img_h, img_w, img_h], device=device)  # (N, 4) pixels
        valid = (gt_all[:, 2] > 0) & (gt_all[:, 3] > 0)
        centers = (grid + 0.5) * stride[:, None]

        fg_masks, obj_t, cls_t, box_t, l1_t = [], [], [], [], []
        for i in range(bs):
            sel = (targets[:, 0] == i) & valid
            obj_i = torch.zeros(pred.shape[1], device=device)
            if sel.any():
                gt, gc = gt_all[sel], targets[sel, 1].long()
                asg = simota_assign(boxes[i].detach(), pred[i, :, 4].detach(), pred[i, :, 5:].detach(),
                                    centers, stride, gt, gc)
                fg = asg.fg
                obj_i[fg] = 1.0
                matched = gt[asg.gt_index]  # (F, 4)
                cls_t.append(F.one_hot(gc[asg.gt_index], self.nc).float() * asg.iou[:, None])
                box_t.append(matched)
                s = stride[fg, None]
                l1_t.append(torch.cat((matched[:, :2] / s - grid[fg], (matched[:, 2:] / s + 1e-8).log()), 1))
            else:
                fg = torch.zeros(pred.shape[1], dtype=torch.bool, device=device)
            fg_masks.append(fg)
            obj_t.append(obj_i)

        fg = torch.stack(fg_masks)  # (b, A)
        num_fg = max(int(fg.sum()), 1)
        zero = pred.new_zeros(())
        bce = F.binary_cross_entropy_with_logits
        loss_obj = bce(pred[..., 4], torch.stack(obj_t), reduction="sum") / num_fg
        if fg.any():
            loss_iou = (1.0 - paired_iou(boxes[fg], torch.cat(box_t)) ** 2).sum() / num_fg
            loss_cls = bce(pred[..., 5:][fg], torch.cat(cls_t), reduction="sum") / num_fg
            loss_l1 = (pred[..., :4][fg] - torch.cat(l1_t)).abs().sum() / num_fg if self.use_l1 else zero
        else:
            loss_iou = loss_cls = loss_l1 = zero
        loss_iou = REG_WEIGHT * loss_iou
        total = loss_iou + loss_obj + loss_cls + loss_l1
        items = {"iou": loss_iou, "obj": loss_obj, "cls": loss_cls, "l1": loss_l1}
        items = {k: v.detach() for k, v in items.items()}
        return total * (bs / LR_BATCH), items
