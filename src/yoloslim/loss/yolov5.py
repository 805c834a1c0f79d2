"""The YOLOv5 loss, computed outside the model on the head's raw maps.

Targets are matched to anchors by shape ratio (``max(r, 1/r) < anchor_t``) and assigned to the
cell holding their centre plus the two nearest neighbouring cells; the box loss is ``1 - CIoU`` of
the decoded prediction (``xy = 2σ - 0.5``, ``wh = (2σ)²·anchor``, in grid units), objectness is a
BCE against the (detached, clamped ≥ 0) IoU, classes a BCE against one-hot (optionally smoothed)
targets. Levels are weighted by the objectness balance ``[4.0, 1.0, 0.4]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from yoloslim.loss.iou import paired_iou
from yoloslim.models.io import unwrap

# centre cell, then the neighbours to the left, above, right, below (in grid units, times 0.5)
_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32) * 0.5


@dataclass
class LevelTargets:
    """Positive samples of one level: where they are and what they should predict.

    Attributes:
        img: (m,) image index in the batch.
        anchor: (m,) anchor index within the level.
        gj: (m,) grid row.
        gi: (m,) grid column.
        box: (m, 4) target ``x, y`` relative to the cell's corner and ``w, h``, in grid units.
        cls: (m,) class index.
        anchor_wh: (m, 2) the matched anchor's size in grid units.
    """

    img: torch.Tensor
    anchor: torch.Tensor
    gj: torch.Tensor
    gi: torch.Tensor
    box: torch.Tensor
    cls: torch.Tensor
    anchor_wh: torch.Tensor


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017, arXiv:1708.02002) wrapped around a BCE-with-logits loss."""

    def __init__(self, bce: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25) -> None:
        super().__init__()
        self.bce = bce
        self.gamma, self.alpha = gamma, alpha
        self.bce.reduction = "none"

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.bce(pred, true)
        p = pred.sigmoid()
        p_t = true * p + (1 - true) * (1 - p)
        alpha = true * self.alpha + (1 - true) * (1 - self.alpha)
        return (loss * alpha * (1.0 - p_t) ** self.gamma).mean()


class YOLOv5Loss:
    """``loss(raw_maps, targets) -> (loss × batch size, {"box", "obj", "cls"})``.

    Args:
        model: the detector (or its DDP wrapper); ``model.spec`` gives classes, anchors and strides.
        hyp: hyper-parameters with ``box``, ``obj``, ``cls`` (gains, already scaled for the image
            size and number of levels by :func:`yoloslim.loss.make_loss`), ``cls_pw``, ``obj_pw``,
            ``anchor_t``, ``fl_gamma`` and ``label_smoothing``.
    """

    neighbours = True  # a target is also assigned to the two nearest neighbouring cells

    def __init__(self, model: nn.Module, hyp) -> None:
        spec = unwrap(model).spec
        self.nc = spec.nc
        self.nl = len(spec.strides)
        self.na = spec.num_anchors
        strides = torch.tensor(spec.strides, dtype=torch.float32).view(-1, 1, 1)
        anchors = torch.tensor(spec.anchors, dtype=torch.float32).view(self.nl, self.na, 2)  # pixels
        self.anchors = anchors / strides  # (nl, na, 2) grid units
        self.balance = [4.0, 1.0, 0.4] if self.nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02][: self.nl]
        self.gains = {"box": float(hyp.box), "obj": float(hyp.obj), "cls": float(hyp.cls)}
        self.anchor_t = float(hyp.anchor_t)
        eps = float(getattr(hyp, "label_smoothing", 0.0))
        self.cls_pos, self.cls_neg = 1.0 - 0.5 * eps, 0.5 * eps
        self.cls_pw, self.obj_pw = float(hyp.cls_pw), float(hyp.obj_pw)
        self.fl_gamma = float(hyp.fl_gamma)
        self._device: torch.device | None = None

    def _criteria(self, device: torch.device) -> None:
        if self._device == device:
            return
        bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([self.cls_pw], device=device))
        bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([self.obj_pw], device=device))
        if self.fl_gamma > 0:
            bce_cls, bce_obj = FocalLoss(bce_cls, self.fl_gamma), FocalLoss(bce_obj, self.fl_gamma)
        self.bce_cls, self.bce_obj = bce_cls, bce_obj
        self.anchors = self.anchors.to(device)
        self._device = device

    def __call__(self, raw: list[torch.Tensor],
                 targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Args: raw [(b, na*(5+nc), h, w)] per level; targets (N, 6) ``[img, cls, cx, cy, w, h]`` in 0..1."""
        device = raw[0].device
        self._criteria(device)
        targets = targets.to(device=device, dtype=torch.float32)
        bs = raw[0].shape[0]
        no = 5 + self.nc
        lbox = torch.zeros((), device=device)
        lobj = torch.zeros((), device=device)
        lcls = torch.zeros((), device=device)
        levels = self.build_targets([r.shape for r in raw], targets)
        for i, (p, t) in enumerate(zip(raw, levels, strict=True)):
            b, _, h, w = p.shape
            p = p.float().view(b, self.na, no, h, w).permute(0, 1, 3, 4, 2)  # (b, na, h, w, no)
            tobj = torch.zeros(p.shape[:4], device=device)  # (b, na, h, w)
            n = t.img.shape[0]
            if n:
                ps = p[t.img, t.anchor, t.gj, t.gi]  # (n, no)
                iou = paired_iou(self.decode_box(ps[:, :4], t.anchor_wh), t.box, kind="ciou")  # (n,)
                lbox = lbox + (1.0 - iou).mean()
                tobj[t.img, t.anchor, t.gj, t.gi] = iou.detach().clamp(0)
                if self.nc > 1:
                    tc = torch.full_like(ps[:, 5:], self.cls_neg)  # (n, nc)
                    tc[torch.arange(n, device=device), t.cls] = self.cls_pos
                    lcls = lcls + self.bce_cls(ps[:, 5:], tc)
            lobj = lobj + self.bce_obj(p[..., 4], tobj) * self.balance[i]
        lbox = lbox * self.gains["box"]
        lobj = lobj * self.gains["obj"]
        lcls = lcls * self.gains["cls"]
        total = (lbox + lobj + lcls) * bs
        return total, {"box": lbox.detach(), "obj": lobj.detach(), "cls": lcls.detach()}

    def decode_box(self, t: torch.Tensor, anchor_wh: torch.Tensor) -> torch.Tensor:
        """Raw (n, 4) box outputs -> (n, 4) ``x, y`` in the cell and ``w, h`` in grid units (YOLOv5 decode)."""
        return torch.cat((t[:, :2].sigmoid() * 2 - 0.5, (t[:, 2:4].sigmoid() * 2) ** 2 * anchor_wh), 1)

    def build_targets(self, shapes: list[torch.Size], targets: torch.Tensor) -> list[LevelTargets]:
        """Assign every target to anchors and cells, level by level.

        Args:
            shapes: the raw map shapes ``(b, na*(5+nc), h, w)``, one per level.
            targets: (N, 6) ``[img, cls, cx, cy, w, h]`` normalised to 0..1.

        Returns:
            One :class:`LevelTargets` per level.
        """
        device = targets.device
        anchors_all = self.anchors.to(device)
        offsets = _OFFSETS.to(device)
        out = []
        for i, shape in enumerate(shapes):
            h, w = int(shape[2]), int(shape[3])
            anchors = anchors_all[i]  # (na, 2) grid units
            scale = torch.tensor([w, h, w, h], device=device, dtype=torch.float32)
            txywh = targets[:, 2:6] * scale  # (N, 4) grid units
            r = txywh[None, :, 2:4] / anchors[:, None]  # (na, N, 2)
            match = torch.max(r, 1 / r).amax(2) < self.anchor_t  # (na, N)
            a, k = match.nonzero(as_tuple=True)  # (M,), (M,)
            gxy = txywh[k, :2]  # (M, 2)
            gxy_inv = torch.tensor([w, h], device=device, dtype=torch.float32) - gxy
            left_up = (gxy % 1 < 0.5) & (gxy > 1)  # (M, 2): neighbour at x-1 / y-1
            right_down = (gxy_inv % 1 < 0.5) & (gxy_inv > 1)  # neighbour at x+1 / y+1
            use = torch.stack((torch.ones_like(left_up[:, 0]), left_up[:, 0], left_up[:, 1],
                               right_down[:, 0], right_down[:, 1]))  # (5, M)
            if not self.neighbours:
                use = use[:1]  # the centre cell only
            which, m = use.nonzero(as_tuple=True)  # (P,), (P,)
            a, k = a[m], k[m]
            gxy = gxy[m]
            gij = (gxy - offsets[which]).long()  # (P, 2)
            gi = gij[:, 0].clamp(0, w - 1)
            gj = gij[:, 1].clamp(0, h - 1)
            gij = torch.stack((gi, gj), 1)
            out.append(LevelTargets(
                img=targets[k, 0].long(), anchor=a, gj=gj, gi=gi,
                box=torch.cat((gxy - gij, txywh[k, 2:4]), 1), cls=targets[k, 1].long(), anchor_wh=anchors[a],
            ))
        return out
