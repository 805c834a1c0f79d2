"""YOLOX nano / tiny / s / m / l / x: CSPDarknet + PAFPN + decoupled anchor-free head.

The architecture and module names are the official Megvii code's (``backbone.backbone.stem.conv.conv``,
``backbone.lateral_conv0.conv``, ``head.cls_preds.0`` ...), so an official checkpoint loads as a plain
strict state dict. Widths and depths come from the spec; a pruned model is this builder with smaller
numbers. The forward returns raw maps ``cat(reg, obj, cls)`` per level, without sigmoid; decoding is
:mod:`yoloslim.models.decode`'s ``"anchor_free"`` style. Input: BGR pixels in 0..255, not normalised.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from yoloslim.models.family import Family
from yoloslim.models.spec import ArchSpec, Widths
from yoloslim.models.yolox_backbone import BaseConv, CSPDarknet, CSPLayer, make_conv

PRESETS: dict[str, tuple[float, float, bool]] = {  # name: (depth, width, depthwise), as the official exps
    "yolox-nano": (0.33, 0.25, True),
    "yolox-tiny": (0.33, 0.375, False),
    "yolox-s": (0.33, 0.50, False),
    "yolox-m": (0.67, 0.75, False),
    "yolox-l": (1.0, 1.0, False),
    "yolox-x": (1.33, 1.25, False),
}

PRIOR_PROB = 0.01  # initial objectness and class probability of the head


class PAFPN(nn.Module):
    """Top-down then bottom-up path aggregation over dark3..dark5; holds the backbone as ``backbone``."""

    def __init__(self, w: Widths, name: str, depth: float, width: float, depthwise: bool = False,
                 act: str = "silu") -> None:
        super().__init__()
        self.backbone = CSPDarknet(w, f"{name}.backbone", depth, width, depthwise, act)
        c3, c4, c5 = self.backbone.out_channels
        w256, w512, w1024 = int(256 * width), int(512 * width), int(1024 * width)
        n = round(3 * depth)

        def csp(key: str, c_in: int, c_out: int) -> CSPLayer:
            return CSPLayer(w, f"{name}.{key}", c_in, c_out, n, shortcut=False, depthwise=depthwise, act=act)

        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral_conv0 = BaseConv(w, f"{name}.lateral_conv0", c5, w512, 1, 1, act)
        self.C3_p4 = csp("C3_p4", self.lateral_conv0.out_channels + c4, w512)
        self.reduce_conv1 = BaseConv(w, f"{name}.reduce_conv1", self.C3_p4.out_channels, w256, 1, 1, act)
        self.C3_p3 = csp("C3_p3", self.reduce_conv1.out_channels + c3, w256)
        self.bu_conv2 = make_conv(w, f"{name}.bu_conv2", self.C3_p3.out_channels, w256, 3, 2, depthwise, act)
        self.C3_n3 = csp("C3_n3", self.bu_conv2.out_channels + self.reduce_conv1.out_channels, w512)
        self.bu_conv1 = make_conv(w, f"{name}.bu_conv1", self.C3_n3.out_channels, w512, 3, 2, depthwise, act)
        self.C3_n4 = csp("C3_n4", self.bu_conv1.out_channels + self.lateral_conv0.out_channels, w1024)
        self.out_channels = [self.C3_p3.out_channels, self.C3_n3.out_channels, self.C3_n4.out_channels]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x2, x1, x0 = self.backbone(x)  # strides 8, 16, 32
        fpn_out0 = self.lateral_conv0(x0)  # (b, c512, h/32, w/32)
        f_out0 = self.C3_p4(torch.cat([self.upsample(fpn_out0), x1], 1))  # (b, c512, h/16, w/16)
        fpn_out1 = self.reduce_conv1(f_out0)  # (b, c256, h/16, w/16)
        pan_out2 = self.C3_p3(torch.cat([self.upsample(fpn_out1), x2], 1))  # (b, c256, h/8, w/8)
        pan_out1 = self.C3_n3(torch.cat([self.bu_conv2(pan_out2), fpn_out1], 1))  # (b, c512, h/16, w/16)
        pan_out0 = self.C3_n4(torch.cat([self.bu_conv1(pan_out1), fpn_out0], 1))  # (b, c1024, h/32, w/32)
        return pan_out2, pan_out1, pan_out0


class YOLOXHead(nn.Module):
    """Decoupled head: per level a 1x1 ``stem``, two 3x3 convs per branch, and three prediction convs.

    The regression branch feeds ``reg_preds`` (4: x, y offsets and log w, h in stride units) and
    ``obj_preds`` (1); the class branch feeds ``cls_preds`` (nc).
    """

    def __init__(self, w: Widths, name: str, nc: int, width: float, in_channels: list[int],
                 depthwise: bool = False, act: str = "silu") -> None:
        super().__init__()
        self.nc = nc
        hidden = int(256 * width)
        self.stems = nn.ModuleList()
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        self.cls_preds = nn.ModuleList()
        self.reg_preds = nn.ModuleList()
        self.obj_preds = nn.ModuleList()
        for i, c_in in enumerate(in_channels):
            stem = BaseConv(w, f"{name}.stems.{i}", c_in, hidden, 1, 1, act)
            self.stems.append(stem)
            branch_out = {}
            for branch, convs in (("cls_convs", self.cls_convs), ("reg_convs", self.reg_convs)):
                c = stem.out_channels
                layers = []
                for j in range(2):
                    layers.append(make_conv(w, f"{name}.{branch}.{i}.{j}", c, hidden, 3, 1, depthwise, act))
                    c = layers[-1].out_channels
                convs.append(nn.Sequential(*layers))
                branch_out[branch] = c
            self.cls_preds.append(nn.Conv2d(branch_out["cls_convs"], nc, 1))
            self.reg_preds.append(nn.Conv2d(branch_out["reg_convs"], 4, 1))
            self.obj_preds.append(nn.Conv2d(branch_out["reg_convs"], 1, 1))

    def initialize_biases(self, prior_prob: float = PRIOR_PROB) -> None:
        """Class and objectness biases so that every prior starts at probability ``prior_prob``."""
        with torch.no_grad():
            for conv in [*self.cls_preds, *self.obj_preds]:
                conv.bias.fill_(-math.log((1 - prior_prob) / prior_prob))

    def forward(self, xs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        out = []
        for i, x in enumerate(xs):
            x = self.stems[i](x)
            cls_feat = self.cls_convs[i](x)
            reg_feat = self.reg_convs[i](x)
            reg, obj = self.reg_preds[i](reg_feat), self.obj_preds[i](reg_feat)
            out.append(torch.cat([reg, obj, self.cls_preds[i](cls_feat)], 1))  # (b, 4 + 1 + nc, h, w)
        return out


class YOLOX(nn.Module):
    """YOLOX detector returning raw head maps ``(b, 4 + 1 + nc, h/s, w/s)`` for strides 8, 16, 32."""

    def __init__(self, spec: ArchSpec, record: bool = False) -> None:
        super().__init__()
        self.spec = spec
        opts = spec.options
        depth, width = float(opts.get("depth_multiple", 1.0)), float(opts.get("width_multiple", 1.0))
        depthwise = bool(opts.get("depthwise", False))
        act = str(opts.get("act", "silu"))
        w = Widths(spec, record)
        self.backbone = PAFPN(w, "backbone", depth, width, depthwise, act)
        self.head = YOLOXHead(w, "head", spec.nc, width, self.backbone.out_channels, depthwise, act)
        w.check_all_used()
        self.head.initialize_biases(PRIOR_PROB)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Args: x (b, 3, h, w) BGR in 0..255. Returns raw maps [(b, 5+nc, h/s, w/s) for s in 8, 16, 32]."""
        return self.head(self.backbone(x))

    @property
    def head_convs(self) -> list[nn.Conv2d]:
        """The prediction convs whose output channels are fixed by the head's layout."""
        h = self.head
        return [*h.reg_preds, *h.obj_preds, *h.cls_preds]


def yolox_spec(name: str, nc: int = 80) -> ArchSpec:
    """The preset spec of ``name`` (``yolox-nano`` ... ``yolox-x``) with every width and depth filled in."""
    depth, width, depthwise = PRESETS[name]
    spec = ArchSpec(
        family=FAMILY.name, name=name, nc=nc, anchors=[], strides=list(FAMILY.strides),
        options={"depth_multiple": depth, "width_multiple": width, "depthwise": depthwise, "act": "silu",
                 **FAMILY.input_options(), "decode": FAMILY.decode},
    )
    YOLOX(spec, record=True)  # fills spec.channels and spec.depths
    return spec


FAMILY = Family(
    name="yolox", builder=YOLOX, presets={name: (lambda nc, name=name: yolox_spec(name, nc)) for name in PRESETS},
    loss="yoloslim.loss.yolox:YOLOXLoss", decode="anchor_free", input_bgr=True, input_scale=1.0,
    strides=(8, 16, 32), importers={"yolox": "yoloslim.deploy.import_yolox:load_yolox_checkpoint"},
)
