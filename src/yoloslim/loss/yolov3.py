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

from yoloslim.loss.yolov5 import YOLOv5Loss

MAX_LOG_WH = 8.0  # exp(8) ≈ 3000 anchors: beyond that the prediction is clamped (no overflow early on)


class YOLOv3Loss(YOLOv5Loss):
    """``loss(raw_maps, targets) -> (loss × batch size, {"box", "obj", "cls"})`` for darknet decoding.

    Args: as :class:`~yoloslim.loss.yolov5.YOLOv5Loss`.
    """

    neighbours = False  # σ(t) stays in (0, 1): only the centre cell can predict the centre

    def decode_box(self, t: torch.Tensor, anchor_wh: torch.Tensor) -> torch.Tensor:
        """Darknet decode: ``xy = σ(t)`` in the cell, ``wh = exp(t)·anchor`` (clamped before ``exp``)."""
        return torch.cat((t[:, :2].sigmoid(), t[:, 2:4].clamp(max=MAX_LOG_WH).exp() * anchor_wh), 1)
