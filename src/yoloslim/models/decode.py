"""Decoding raw head maps into boxes: one place, shared by val, predict, export and bench."""

from __future__ import annotations

import torch
from torch import nn

from yoloslim.models import family_of
from yoloslim.models.blocks_v8 import REG_MAX
from yoloslim.models.spec import ArchSpec


def decode_style(spec: ArchSpec) -> str:
    """How the spec's raw maps decode: ``"yolov5"``, ``"darknet"``, ``"anchor_free"`` or ``"dfl"`` (see
    :class:`Decoder`); ``options["decode"]`` when the spec sets it, else its family's."""
    return spec.options.get("decode", family_of(spec).decode)


class Decoder(nn.Module):
    """Turns the raw maps of a head into ``(b, N, 5 + nc)`` rows.

    Each row is ``cx, cy, w, h`` in input pixels, objectness probability, class probabilities.
    The style comes from the spec: ``"yolov5"`` (``xy = (2σ - 0.5 + grid)·s``, ``wh = (2σ)²·anchor``),
    ``"darknet"`` (``xy = (σ + grid)·s``, ``wh = exp(t)·anchor``), ``"anchor_free"`` (YOLOX:
    ``xy = (t + grid)·s``, ``wh = exp(t)·s``) or ``"dfl"`` (YOLOv8 / YOLO11: each box side's distance
    is the expectation of a softmax over ``reg_max`` bins, ``l, t, r, b`` × s from the anchor point
    ``grid + 0.5``; no objectness, so its column is 1 and a row's confidence is its class probability).
    """

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.style = decode_style(spec)
        self.nc = spec.nc
        self.na = spec.num_anchors if spec.anchors else 1
        self.strides = [float(s) for s in spec.strides]
        self.reg_max = int(spec.options.get("reg_max", REG_MAX))
        self.register_buffer("bins", torch.arange(self.reg_max, dtype=torch.float32), persistent=False)
        anchors = (torch.tensor(spec.anchors, dtype=torch.float32).view(len(spec.anchors), -1, 2) if spec.anchors
                   else torch.zeros(0))
        self.register_buffer("anchors", anchors, persistent=False)  # (nl, na, 2) in pixels

    def forward(self, raw: list[torch.Tensor]) -> torch.Tensor:
        if self.style == "dfl":
            return torch.cat([self._dfl(p, s) for p, s in zip(raw, self.strides, strict=True)], 1)
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


    def _dfl(self, p: torch.Tensor, s: float) -> torch.Tensor:
        """One level of a DFL head: (b, 4·reg_max + nc, h, w) -> (b, h·w, 5 + nc)."""
        b, _, h, w = p.shape
        box = p[:, :4 * self.reg_max].view(b, 4, self.reg_max, h, w).softmax(2)  # (b, 4, bins, h, w)
        dist = (box * self.bins.to(p.dtype).view(1, 1, -1, 1, 1)).sum(2)  # (b, 4, h, w): l, t, r, b in strides
        gy, gx = torch.meshgrid(torch.arange(h, device=p.device, dtype=p.dtype),
                                torch.arange(w, device=p.device, dtype=p.dtype), indexing="ij")
        ax, ay = gx + 0.5, gy + 0.5  # (h, w) anchor points
        x1, y1, x2, y2 = ax - dist[:, 0], ay - dist[:, 1], ax + dist[:, 2], ay + dist[:, 3]
        xywh = torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), 1) * s  # (b, 4, h, w)
        cls = p[:, 4 * self.reg_max:].sigmoid()  # (b, nc, h, w)
        rows = torch.cat((xywh, torch.ones_like(cls[:, :1]), cls), 1)  # (b, 5 + nc, h, w)
        return rows.flatten(2).transpose(1, 2)


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


def check_input(spec: ArchSpec, b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A fixed pseudo-random uint8 image batch, preprocessed in the family's convention (the input of
    the export's parity check and of the latency benchmarks)."""
    g = torch.Generator().manual_seed(seed)
    return preprocess(torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8), spec)
