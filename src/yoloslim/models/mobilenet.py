"""The light YOLOv3 variants as darknet cfgs: MobileNet v1 / v2 backbones, Lite, Tiny-MobileNet.

All are plain darknet cfgs (a depthwise conv is ``[convolutional]`` with ``groups = filters``), so
they export to ``.cfg`` + ``.weights`` like YOLOv3 itself. Layer by layer (docs/prune-darknet-yolov3.md
explains the choices):

- ``yolov3-mobilenet``: MobileNet v1 (width 1.0, 13 depthwise-separable blocks) with the YOLOv3
  three-scale head whose 3x3 convs are depthwise-separable too. Leaky activations throughout, so
  pjreddie darknet and OpenCV's darknet reader run the exported cfg.
- ``yolov3-mobilenetv2``: MobileNetV2 (width 1.0, inverted residuals, ReLU6, linear bottlenecks,
  without the final 1280-wide conv) under the same depthwise-separable head, narrower (256/128/64).
  ReLU6 needs AlexeyAB darknet to run the exported cfg.
- ``yolov3-tiny-mobilenet``: YOLOv3-tiny's topology (max-pools, the size-2 stride-1 pool, two
  scales) with every 3x3 conv after the first made depthwise-separable: a drop-in for tiny.
- ``yolov3-lite``: the lightest: strided depthwise convs instead of max-pools, widths capped at 256,
  two scales.
"""

from __future__ import annotations

from yoloslim.models.darknet_cfg import Section
from yoloslim.models.darknet_presets import TINY_ANCHORS, CfgWriter

# MobileNet v1: (stride, output channels) of each depthwise-separable block after the stem.
V1_BLOCKS = [(1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), *[(1, 512)] * 5, (2, 1024),
             (1, 1024)]
# MobileNetV2: (expansion t, output channels c, repeats n, first stride s), as in the paper.
V2_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1)]


def dw_separable(c: CfgWriter, c_in: int, c_out: int, stride: int = 1, act: str = "leaky") -> int:
    """Depthwise 3x3 on ``c_in`` channels then pointwise 1x1 to ``c_out``; returns the last index."""
    c.dw(c_in, stride, act)
    return c.conv(c_out, 1, 1, act)


def dw_separable_head(c: CfgWriter, mid: int, taps: list[tuple[int, int]], masks: list[list[int]],
                      act: str = "leaky") -> None:
    """YOLOv3's three-scale head with depthwise-separable 3x3 convs.

    Args:
        c: the cfg being written; its last layer is the stride-32 feature.
        mid: the 1x1 width at stride 32; it halves at each finer scale.
        taps: darknet indices of the finer backbone features, coarse to fine.
        masks: the [yolo] masks, coarse to fine.
    """
    for level, mask in enumerate(masks):
        if level:
            c.route(-5)  # the third 1x1 of the coarser scale (before dw, pw, head conv, yolo)
            c.conv(mid)
            c.upsample(2)
            c.route(-1, taps[level - 1])
        for _ in range(3):
            c.conv(mid)
            dw_separable(c, mid, mid * 2, act=act)
        c.head(mask)
        mid //= 2


def two_scale_head(c: CfgWriter, mid: int, tap: int, tap_channels: int) -> None:
    """YOLOv3-tiny's two-scale head with depthwise-separable 3x3 convs.

    Args:
        c: the cfg being written; its last layer is the stride-32 feature.
        mid: the 1x1 width at stride 32 (half of it at stride 16).
        tap: darknet index of the stride-16 backbone feature, of ``tap_channels`` channels.
    """
    c.conv(mid)
    dw_separable(c, mid, mid * 2)
    c.head([3, 4, 5])
    c.route(-5)  # the 1x1 of width mid (before dw, pw, head conv, yolo)
    c.conv(mid // 2)
    c.upsample(2)
    c.route(-1, tap)
    dw_separable(c, mid // 2 + tap_channels, mid)
    c.head([0, 1, 2])


def yolov3_mobilenet_cfg(nc: int = 80) -> list[Section]:
    """MobileNet v1 backbone + depthwise-separable YOLOv3 head (strides 8, 16, 32)."""
    c = CfgWriter(416, nc)
    c.conv(32, 3, 2)
    ch, taps = 32, {}
    for i, (s, out) in enumerate(V1_BLOCKS):
        idx = dw_separable(c, ch, out, s)
        ch = out
        if i in (4, 10):  # last block at stride 8 (256 ch) and stride 16 (512 ch)
            taps[i] = idx
    dw_separable_head(c, 512, [taps[10], taps[4]], [[6, 7, 8], [3, 4, 5], [0, 1, 2]])
    return c.sections


def yolov3_mobilenetv2_cfg(nc: int = 80) -> list[Section]:
    """MobileNetV2 backbone (inverted residuals, ReLU6) + depthwise-separable YOLOv3 head."""
    c = CfgWriter(416, nc)
    c.conv(32, 3, 2, "relu6")
    ch, taps = 32, []
    for t, out, n, s in V2_SETTINGS:
        for k in range(n):
            stride = s if k == 0 else 1
            if t > 1:
                c.conv(ch * t, 1, 1, "relu6")
            c.dw(ch * t, stride, "relu6")
            idx = c.conv(out, 1, 1, "linear")
            if stride == 1 and ch == out:
                idx = c.shortcut(-4 if t > 1 else -3)
            ch = out
        if out in (32, 96):  # stride 8 and stride 16 features
            taps.append(idx)
    dw_separable_head(c, 256, taps[::-1], [[6, 7, 8], [3, 4, 5], [0, 1, 2]])
    return c.sections


def yolov3_tiny_mobilenet_cfg(nc: int = 80) -> list[Section]:
    """YOLOv3-tiny with depthwise-separable 3x3 convs (same pools, widths and two scales)."""
    c = CfgWriter(416, nc, TINY_ANCHORS)
    c.conv(16, 3)
    c.maxpool(2, 2)
    ch = 16
    p4 = -1
    for out in (32, 64, 128, 256):
        idx = dw_separable(c, ch, out)
        ch = out
        if out == 256:
            p4 = idx
        c.maxpool(2, 2)
    dw_separable(c, 256, 512)
    c.maxpool(2, 1)
    dw_separable(c, 512, 1024)
    two_scale_head(c, 256, p4, 256)
    return c.sections


def yolov3_lite_cfg(nc: int = 80) -> list[Section]:
    """Strided depthwise-separable backbone to 256 channels + a two-scale head (strides 16, 32)."""
    c = CfgWriter(416, nc, TINY_ANCHORS)
    c.conv(16, 3, 2)
    ch = 16
    for out in (32, 64, 128):
        dw_separable(c, ch, out, 2)
        ch = out
    p4 = dw_separable(c, 128, 128)
    dw_separable(c, 128, 256, 2)
    dw_separable(c, 256, 256)
    two_scale_head(c, 128, p4, 128)
    return c.sections
