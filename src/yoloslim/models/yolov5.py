"""YOLOv5 v6.x (anchor-based; Conv, C3, SPPF, Detect at strides 8/16/32).

The layer table is the reference ``yolov5s.yaml``; widths and depths come from the spec, so a
pruned model is this builder with smaller numbers. Module names follow the reference
(``model.0.conv.weight`` ... ``model.24.m.0.weight``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from yoloslim.models.blocks import Bottleneck, Concat, Conv, run_layers
from yoloslim.models.family import Family
from yoloslim.models.spec import ArchSpec, Widths, make_divisible

DEFAULT_ANCHORS = [
    [10, 13, 16, 30, 33, 23],  # P3/8
    [30, 61, 62, 45, 59, 119],  # P4/16
    [116, 90, 156, 198, 373, 326],  # P5/32
]

# (from, repeats, module, args) exactly as the reference v6 yaml; widths are for multiple 1.0.
LAYERS: list[tuple[int | list[int], int, str, list]] = [
    (-1, 1, "Conv", [64, 6, 2, 2]),  # 0-P1/2
    (-1, 1, "Conv", [128, 3, 2]),  # 1-P2/4
    (-1, 3, "C3", [128]),
    (-1, 1, "Conv", [256, 3, 2]),  # 3-P3/8
    (-1, 6, "C3", [256]),
    (-1, 1, "Conv", [512, 3, 2]),  # 5-P4/16
    (-1, 9, "C3", [512]),
    (-1, 1, "Conv", [1024, 3, 2]),  # 7-P5/32
    (-1, 3, "C3", [1024]),
    (-1, 1, "SPPF", [1024, 5]),  # 9
    (-1, 1, "Conv", [512, 1, 1]),
    (-1, 1, "Upsample", []),
    ([-1, 6], 1, "Concat", []),  # cat backbone P4
    (-1, 3, "C3", [512, False]),  # 13
    (-1, 1, "Conv", [256, 1, 1]),
    (-1, 1, "Upsample", []),
    ([-1, 4], 1, "Concat", []),  # cat backbone P3
    (-1, 3, "C3", [256, False]),  # 17 (P3/8-small)
    (-1, 1, "Conv", [256, 3, 2]),
    ([-1, 14], 1, "Concat", []),  # cat head P4
    (-1, 3, "C3", [512, False]),  # 20 (P4/16-medium)
    (-1, 1, "Conv", [512, 3, 2]),
    ([-1, 10], 1, "Concat", []),  # cat head P5
    (-1, 3, "C3", [1024, False]),  # 23 (P5/32-large)
    ([17, 20, 23], 1, "Detect", []),  # Detect(P3, P4, P5)
]

PRESETS = {  # name: (depth_multiple, width_multiple)
    "yolov5n": (0.33, 0.25),
    "yolov5s": (0.33, 0.50),
    "yolov5m": (0.67, 0.75),
    "yolov5l": (1.0, 1.0),
    "yolov5x": (1.33, 1.25),
}


class C3(nn.Module):
    """CSP bottleneck with 3 convs: ``cv3(cat(m(cv1(x)), cv2(x)))``."""

    def __init__(self, w: Widths, name: str, c1: int, c2_default: int, n_default: int, shortcut: bool) -> None:
        super().__init__()
        c_ = w.ch(f"{name}.cv1.conv", c2_default // 2)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, w.ch(f"{name}.cv2.conv", c2_default // 2), 1, 1)
        n = w.depth(name, n_default)
        blocks = []
        c_in = c_
        for i in range(n):
            mid = w.ch(f"{name}.m.{i}.cv1.conv", c2_default // 2)
            out = w.ch(f"{name}.m.{i}.cv2.conv", c2_default // 2)
            blocks.append(Bottleneck(c_in, mid, out, shortcut))
            c_in = out
        self.m = nn.Sequential(*blocks)
        self.cv3 = Conv(c_in + self.cv2.conv.out_channels, w.ch(f"{name}.cv3.conv", c2_default), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools concatenated."""

    def __init__(self, w: Widths, name: str, c1: int, c2_default: int, k: int = 5) -> None:
        super().__init__()
        c_ = w.ch(f"{name}.cv1.conv", c1 // 2)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, w.ch(f"{name}.cv2.conv", c2_default), 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Detect(nn.Module):
    """Anchor-based head: one 1x1 conv per level emitting ``na * (5 + nc)`` raw channels.

    Returns the raw maps; decoding lives in :mod:`yoloslim.models.decode`.
    """

    def __init__(self, nc: int, anchors: list[list[float]], strides: list[int], ch: list[int]) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        stride = torch.tensor(strides, dtype=torch.float32)
        # anchors in grid units per level, as the reference stores them: (nl, na, 2)
        grid_anchors = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2) / stride.view(-1, 1, 1)
        self.register_buffer("anchors", grid_anchors)
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(x) for conv, x in zip(self.m, xs, strict=True)]  # each (b, na*no, h, w)


class YOLOv5(nn.Module):
    """YOLOv5 v6.x detector returning raw head maps, one per stride."""

    def __init__(self, spec: ArchSpec, record: bool = False) -> None:
        super().__init__()
        self.spec = spec
        gd = spec.options.get("depth_multiple", 1.0)
        gw = spec.options.get("width_multiple", 1.0)
        w = Widths(spec, record)
        layers: list[nn.Module] = []
        ch = [3]
        for i, (f, n, kind, args) in enumerate(LAYERS):
            name = f"model.{i}"
            n_default = max(round(n * gd), 1) if n > 1 else n
            c_in = ch[f] if isinstance(f, int) else None
            if kind == "Conv":
                c2 = w.ch(f"{name}.conv", make_divisible(args[0] * gw))
                k, s = args[1], args[2]
                p = args[3] if len(args) > 3 else None
                m = Conv(c_in, c2, k, s, p)
            elif kind == "C3":
                shortcut = args[1] if len(args) > 1 else True
                m = C3(w, name, c_in, make_divisible(args[0] * gw), n_default, shortcut)
                c2 = m.cv3.conv.out_channels
            elif kind == "SPPF":
                m = SPPF(w, name, c_in, make_divisible(args[0] * gw), args[1])
                c2 = m.cv2.conv.out_channels
            elif kind == "Upsample":
                m = nn.Upsample(None, 2, "nearest")
                c2 = c_in
            elif kind == "Concat":
                m = Concat(1)
                c2 = sum(ch[j] for j in f)
            else:  # Detect
                m = Detect(spec.nc, spec.anchors, spec.strides, [ch[j] for j in f])
                c2 = 0
            m.f = f  # where the layer's input comes from
            m.i = i
            layers.append(m)
            ch = ch + [c2] if i else [c2]
        self.model = nn.Sequential(*layers)
        self.save = sorted({j for f, *_ in LAYERS for j in ([f] if isinstance(f, int) else f) if j != -1})
        w.check_all_used()
        self._initialize()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Args: x (b, 3, h, w) RGB in 0..1. Returns raw maps [(b, na*(5+nc), h/s, w/s) for s in strides]."""
        return run_layers(self.model, self.save, x)

    @property
    def head_convs(self) -> list[nn.Conv2d]:
        """The prediction convs whose outputs are fixed by the head's layout."""
        return list(self.model[-1].m)

    def _initialize(self) -> None:
        """Reference initialisation: objectness and class priors in the head biases."""
        det = self.model[-1]
        for conv, s in zip(det.m, self.spec.strides, strict=True):
            b = conv.bias.view(det.na, -1)  # (na, no)
            with torch.no_grad():
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5:] += math.log(0.6 / (det.nc - 0.99)) if det.nc > 1 else 0.0


def yolov5_spec(name: str, nc: int = 80) -> ArchSpec:
    """The preset spec of ``name`` (yolov5n/s/m/l/x) with every width and depth filled in."""
    gd, gw = PRESETS[name]
    spec = ArchSpec(
        family=FAMILY.name, name=name, nc=nc, anchors=[list(map(float, a)) for a in DEFAULT_ANCHORS],
        strides=list(FAMILY.strides), options={"depth_multiple": gd, "width_multiple": gw, **FAMILY.input_options()},
    )
    YOLOv5(spec, record=True)  # fills spec.channels and spec.depths
    return spec


FAMILY = Family(
    name="yolov5", builder=YOLOv5, presets={name: (lambda nc, name=name: yolov5_spec(name, nc)) for name in PRESETS},
    loss="yoloslim.loss.yolov5:YOLOv5Loss", decode="yolov5", input_bgr=False, input_scale=1 / 255,
    strides=(8, 16, 32), importers={"yolov5": "yoloslim.deploy.import_yolov5:import_yolov5"},
)
