"""The YOLOv3 loss: YOLOv5's loss on darknet-decoded boxes.

Everything the YOLOv5 loss does is kept (shape-ratio anchor matching, ``1 - CIoU`` box loss, BCE
objectness against the detached IoU, BCE classes, the level balance, the gains of
:func:`yoloslim.loss.make_loss`) except what darknet's decode changes:

- boxes are decoded as the model is decoded at inference (:mod:`yoloslim.models.decode`, style
  ``"darknet"``): ``xy = σ(t)`` inside the cell, ``wh = exp(t)·anchor``;
- a target is assigned to the cell holding its centre only: ``σ(t)`` stays in (0, 1), so a
  neighbouring cell (YOLOv5's extra positives) could never predict the centre.
"""

from __future__ import annotations

import torch

from yoloslim.loss.iou import paired_iou
from yoloslim.loss.yolov5 import LevelTargets, YOLOv5Loss

MAX_LOG_WH = 8.0  # exp(8) ≈ 3000 anchors: beyond that the prediction is clamped (no overflow early on)


class YOLOv3Loss(YOLOv5Loss):
    """``loss(raw_maps, targets) -> (loss × batch size, {"box", "obj", "cls"})`` for darknet decoding.

    Args: as :class:`~yoloslim.loss.yolov5.YOLOv5Loss`.
    """

    def __call__(self, raw: list[torch.Tensor],
                 targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Args: raw [(b, na*(5+nc), h, w)] per level; targets (N, 6) ``[img, cls, cx, cy, w, h]`` in 0..1."""
        device = raw[0].device
        self._criteria(device)
        targets = targets.to(device=device, dtype=torch.float32)
        bs, no = raw[0].shape[0], 5 + self.nc
        lbox, lobj, lcls = (torch.zeros((), device=device) for _ in range(3))
        assigned = self.build_targets([r.shape for r in raw], targets)
        for i, (p, t) in enumerate(zip(raw, assigned, strict=True)):
            b, _, h, w = p.shape
            p = p.float().view(b, self.na, no, h, w).permute(0, 1, 3, 4, 2)  # (b, na, h, w, no)
            tobj = torch.zeros(p.shape[:4], device=device)  # (b, na, h, w)
            n = t.img.shape[0]
            if n:
                ps = p[t.img, t.anchor, t.gj, t.gi]  # (n, no)
                pxy = ps[:, :2].sigmoid()
                pwh = ps[:, 2:4].clamp(max=MAX_LOG_WH).exp() * t.anchor_wh
                iou = paired_iou(torch.cat((pxy, pwh), 1), t.box, kind="ciou")  # (n,)
                lbox = lbox + (1.0 - iou).mean()
                tobj[t.img, t.anchor, t.gj, t.gi] = iou.detach().clamp(0)
                if self.nc > 1:
                    tc = torch.full_like(ps[:, 5:], self.cls_neg)  # (n, nc)
                    tc[torch.arange(n, device=device), t.cls] = self.cls_pos
                    lcls = lcls + self.bce_cls(ps[:, 5:], tc)
            lobj = lobj + self.bce_obj(p[..., 4], tobj) * self.balance[i]
        lbox, lobj, lcls = lbox * self.gains["box"], lobj * self.gains["obj"], lcls * self.gains["cls"]
        return (lbox + lobj + lcls) * bs, {"box": lbox.detach(), "obj": lobj.detach(), "cls": lcls.detach()}

    def build_targets(self, shapes: list[torch.Size], targets: torch.Tensor) -> list[LevelTargets]:
        """Every (target, anchor) pair within the shape ratio, at the cell holding the target's centre.

        Args:
            shapes: the raw map shapes ``(b, na*(5+nc), h, w)``, one per level.
            targets: (N, 6) ``[img, cls, cx, cy, w, h]`` normalised to 0..1.
        """
        device = targets.device
        anchors_all = self.anchors.to(device)
        out = []
        for i, shape in enumerate(shapes):
            h, w = int(shape[2]), int(shape[3])
            anchors = anchors_all[i]  # (na, 2) grid units
            txywh = targets[:, 2:6] * torch.tensor([w, h, w, h], device=device, dtype=torch.float32)  # (N, 4)
            r = txywh[None, :, 2:4] / anchors[:, None]  # (na, N, 2)
            a, k = (torch.max(r, 1 / r).amax(2) < self.anchor_t).nonzero(as_tuple=True)  # (M,), (M,)
            gxy = txywh[k, :2]  # (M, 2)
            gi = gxy[:, 0].long().clamp(0, w - 1)
            gj = gxy[:, 1].long().clamp(0, h - 1)
            cell = torch.stack((gi, gj), 1).to(gxy.dtype)
            out.append(LevelTargets(img=targets[k, 0].long(), anchor=a, gj=gj, gi=gi,
                                    box=torch.cat((gxy - cell, txywh[k, 2:4]), 1), cls=targets[k, 1].long(),
                                    anchor_wh=anchors[a]))
        return out
