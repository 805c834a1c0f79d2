"""Decoding raw head maps into boxes: one place, shared by val, predict, export and bench."""

from __future__ import annotations

import torch
from torch import nn

from yoloslim.models import family_of
from yoloslim.models.spec import ArchSpec


def decode_style(spec: ArchSpec) -> str:
    """How the spec's raw maps decode: ``"yolov5"``, ``"darknet"`` or ``"anchor_free"`` (see :class:`Decoder`);
    ``options["decode"]`` when the spec sets it, else its family's."""
    return spec.options.get("decode", family_of(spec).decode)


class Decoder(nn.Module):
    """Turns the raw maps of a head into ``(b, N, 5 + nc)`` rows.

    Each row is ``cx, cy, w, h`` in input pixels, objectness probability, class probabilities.
    The style comes from the spec: ``"yolov5"`` (``xy = (2σ - 0.5 + grid)·s``, ``wh = (2σ)²·anchor``),
    ``"darknet"`` (``xy = (σ + grid)·s``, ``wh = exp(t)·anchor``) or ``"anchor_free"`` (YOLOX:
    ``xy = (t + grid)·s``, ``wh = exp(t)·s``).
    """

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.style = decode_style(spec)
        self.nc = spec.nc
        self.na = spec.num_anchors if spec.anchors else 1
        self.strides = [float(s) for s in spec.strides]
        anchors = (torch.tensor(spec.anchors, dtype=torch.float32).view(len(spec.anchors), -1, 2) if spec.anchors
                   else torch.zeros(0))
        self.register_buffer("anchors", anchors, persistent=False)  # (nl, na, 2) in pixels

    def forward(self, raw: list[torch.Tensor]) -> torch.Tensor:
        out = []
        for i, p in enumerate(raw):
            b, _, h, w = p.shape
            no = 5 + self.nc
            p = p.view(b, self.na, no, h, w).permute(0, 1, 3, 4, 2)  # (b, na, h, w, no)
            gy, gx = torch.meshgrid(torch.arange(h, device=p.device, dtype=p.dtype),
                                    torch.arange(w, device=p.device, dtype=p.dtype), indexing="ij")
            grid = torch.stack((gx, gy), -1).view(1, 1, h, w, 2)
            s = self.strides[i]
            if self.style == "yolov5":
                y = p.sigmoid()
                xy = (y[..., :2] * 2 - 0.5 + grid) * s
                wh = (y[..., 2:4] * 2) ** 2 * self.anchors[i].view(1, self.na, 1, 1, 2)
                rest = y[..., 4:]
            elif self.style == "darknet":
                xy = (p[..., :2].sigmoid() + grid) * s
                wh = p[..., 2:4].exp() * self.anchors[i].view(1, self.na, 1, 1, 2)
                rest = p[..., 4:].sigmoid()
            else:  # anchor_free
                xy = (p[..., :2] + grid) * s
                wh = p[..., 2:4].exp() * s
                rest = p[..., 4:].sigmoid()
            out.append(torch.cat((xy, wh, rest), -1).view(b, -1, no))
        return torch.cat(out, 1)


class DecodedModel(nn.Module):
    """A detector followed by its decoder: image in, ``(b, N, 5 + nc)`` decoded rows out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.decoder = Decoder(model.spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.model(x))


def preprocess(imgs: torch.Tensor, spec: ArchSpec) -> torch.Tensor:
    """Loader images to model input, in the family's own convention.

    Args:
        imgs: (b, 3, h, w) uint8 RGB, as every loader and source in yoloslim yields them.
        spec: the model's spec; ``input_bgr`` and ``input_scale`` say what the model expects
            (YOLOv5 / YOLOv3: RGB in 0..1; YOLOX: BGR in 0..255).

    Returns:
        (b, 3, h, w) float32.
    """
    x = imgs.float()
    if spec.input_bgr:
        x = x.flip(1)
    scale = spec.input_scale
    return x * scale if scale != 1.0 else x
