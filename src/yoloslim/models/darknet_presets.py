"""The YOLOv3 presets as darknet cfgs, generated in Python.

``yolov3``, ``yolov3-spp`` and ``yolov3-tiny`` reproduce pjreddie/darknet ``cfg/yolov3.cfg``,
``cfg/yolov3-spp.cfg`` and ``cfg/yolov3-tiny.cfg`` layer for layer (same layer indices, so
``[route] layers=-1, 61`` means what it means there); with 80 classes they have 61,949,149,
62,998,749 and 8,852,366 parameters. The MobileNet variants are in :mod:`yoloslim.models.mobilenet`.
"""

from __future__ import annotations

from yoloslim.models.darknet_cfg import Section

V3_ANCHORS = [10, 13, 16, 30, 33, 23, 30, 61, 62, 45, 59, 119, 116, 90, 156, 198, 373, 326]
TINY_ANCHORS = [10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319]


class CfgWriter:
    """Appends darknet sections; every method returns the new layer's darknet index."""

    def __init__(self, size: int = 416, nc: int = 80, anchors: list[int] | None = None) -> None:
        self.nc = nc
        self.anchors = list(anchors or V3_ANCHORS)
        self.sections: list[Section] = [{
            "type": "net", "batch": 64, "subdivisions": 16, "width": size, "height": size, "channels": 3,
            "momentum": 0.9, "decay": 0.0005, "learning_rate": 0.001, "burn_in": 1000, "max_batches": 500200,
            "policy": "steps", "steps": [400000, 450000], "scales": [0.1, 0.1],
        }]

    def _add(self, sec: Section) -> int:
        self.sections.append(sec)
        return len(self.sections) - 2

    def conv(self, filters: int, size: int = 1, stride: int = 1, act: str = "leaky", bn: bool = True,
             groups: int = 1) -> int:
        sec: Section = {"type": "convolutional"}
        if bn:
            sec["batch_normalize"] = 1
        sec.update(filters=filters, size=size, stride=stride, pad=1)
        if groups > 1:
            sec["groups"] = groups
        sec["activation"] = act
        return self._add(sec)

    def dw(self, channels: int, stride: int = 1, act: str = "leaky") -> int:
        """A depthwise 3x3 conv (``groups = filters``)."""
        return self.conv(channels, 3, stride, act, groups=channels)

    def shortcut(self, frm: int = -3, act: str = "linear") -> int:
        return self._add({"type": "shortcut", "from": frm, "activation": act})

    def route(self, *layers: int) -> int:
        return self._add({"type": "route", "layers": layers[0] if len(layers) == 1 else list(layers)})

    def upsample(self, stride: int = 2) -> int:
        return self._add({"type": "upsample", "stride": stride})

    def maxpool(self, size: int = 2, stride: int = 2) -> int:
        return self._add({"type": "maxpool", "size": size, "stride": stride})

    def head(self, mask: list[int]) -> int:
        """The linear 1x1 prediction conv and its ``[yolo]`` layer; returns the yolo's index."""
        self.conv(len(mask) * (5 + self.nc), 1, 1, "linear", bn=False)
        return self._add({"type": "yolo", "mask": mask, "anchors": self.anchors, "classes": self.nc,
                          "num": len(self.anchors) // 2, "jitter": 0.3, "ignore_thresh": 0.7,
                          "truth_thresh": 1, "random": 1})

    def residual(self, filters: int, n: int) -> None:
        """Darknet-53 stage body: ``n`` units of 1x1 (filters/2) + 3x3 (filters) + shortcut."""
        for _ in range(n):
            self.conv(filters // 2, 1)
            self.conv(filters, 3)
            self.shortcut(-3)


def darknet53(c: CfgWriter) -> tuple[int, int]:
    """Darknet-53 backbone (layers 0-74); returns the indices of the stride-8 and stride-16 outputs."""
    c.conv(32, 3)
    taps = []
    for filters, n in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
        c.conv(filters, 3, 2)
        c.residual(filters, n)
        taps.append(len(c.sections) - 2)
    return taps[2], taps[3]  # 36, 61


def yolov3_cfg(nc: int = 80, spp: bool = False) -> list[Section]:
    """pjreddie ``yolov3.cfg`` (or ``yolov3-spp.cfg``)."""
    c = CfgWriter(608 if spp else 416, nc)
    p3, p4 = darknet53(c)
    c.conv(512)
    c.conv(1024, 3)
    c.conv(512)
    if spp:
        c.maxpool(5, 1)
        c.route(-2)
        c.maxpool(9, 1)
        c.route(-4)
        c.maxpool(13, 1)
        c.route(-1, -3, -5, -6)
        c.conv(512)
        c.conv(1024, 3)
    else:
        c.conv(1024, 3)
    c.conv(512)
    c.conv(1024, 3)
    c.head([6, 7, 8])
    for filters, tap, mask in ((256, p4, [3, 4, 5]), (128, p3, [0, 1, 2])):
        c.route(-4)
        c.conv(filters)
        c.upsample(2)
        c.route(-1, tap)
        for _ in range(3):
            c.conv(filters)
            c.conv(filters * 2, 3)
        c.head(mask)
    return c.sections


def yolov3_tiny_cfg(nc: int = 80) -> list[Section]:
    """pjreddie ``yolov3-tiny.cfg``: note the ``size=2 stride=1`` maxpool at layer 11."""
    c = CfgWriter(416, nc, TINY_ANCHORS)
    for filters in (16, 32, 64, 128):
        c.conv(filters, 3)
        c.maxpool(2, 2)
    p4 = c.conv(256, 3)  # 8
    c.maxpool(2, 2)
    c.conv(512, 3)
    c.maxpool(2, 1)
    c.conv(1024, 3)
    c.conv(256)
    c.conv(512, 3)
    c.head([3, 4, 5])
    c.route(-4)
    c.conv(128)
    c.upsample(2)
    c.route(-1, p4)
    c.conv(256, 3)
    c.head([0, 1, 2])
    return c.sections
