"""YOLOX building blocks and the CSPDarknet backbone, in the official Megvii layout.

Module names follow the official code (``stem.conv.conv``, ``dark2.0.conv``, ``dark3.1.m.0.conv1``,
``dark5.1.conv2`` ...) so that an official ``.pth`` state dict loads strictly. Every conv's width and
every CSP stage's depth is read from the spec through :class:`~yoloslim.models.spec.Widths`, so a
pruned model is this builder with smaller numbers.
"""

from __future__ import annotations

import torch
from torch import nn

from yoloslim.errors import UserError
from yoloslim.models.blocks import Conv
from yoloslim.models.spec import Widths


class DWConv(nn.Module):
    """Depthwise conv (``dconv``, one filter per input channel) then a 1x1 pointwise conv (``pconv``)."""

    def __init__(self, w: Widths, name: str, c_in: int, c_out_default: int, k: int, s: int = 1,
                 act: str = "silu") -> None:
        super().__init__()
        c_dw = w.ch(f"{name}.dconv.conv", c_in)
        if c_dw != c_in:
            raise UserError(f"depthwise conv {name}.dconv.conv must keep its input width {c_in}, "
                            f"spec says {c_dw}")
        self.dconv = Conv(c_in, c_in, k, s, g=c_in, act=act)
        self.pconv = Conv(c_in, w.ch(f"{name}.pconv.conv", c_out_default), 1, 1, act=act)

    @property
    def out_channels(self) -> int:
        return self.pconv.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pconv(self.dconv(x))


class BaseConv(Conv):
    """Conv (no bias) + BN (eps 1e-3, momentum 0.03, as YOLOX sets them) + SiLU, width from the spec."""

    def __init__(self, w: Widths, name: str, c_in: int, c_out_default: int, k: int, s: int = 1,
                 act: str = "silu") -> None:
        super().__init__(c_in, w.ch(f"{name}.conv", c_out_default), k, s, act=act)

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels


def make_conv(w: Widths, name: str, c_in: int, c_out_default: int, k: int, s: int = 1,
              depthwise: bool = False, act: str = "silu") -> BaseConv | DWConv:
    """``DWConv`` when ``depthwise`` (YOLOX-nano), else ``BaseConv`` — the official ``Conv`` choice."""
    cls = DWConv if depthwise else BaseConv
    return cls(w, name, c_in, c_out_default, k, s, act=act)


class Bottleneck(nn.Module):
    """``conv1`` 1x1 then ``conv2`` 3x3 (depthwise for nano), plus the input when ``shortcut``."""

    def __init__(self, w: Widths, name: str, c_in: int, c_default: int, shortcut: bool, depthwise: bool,
                 act: str = "silu") -> None:
        super().__init__()
        self.conv1 = BaseConv(w, f"{name}.conv1", c_in, c_default, 1, act=act)
        self.conv2 = make_conv(w, f"{name}.conv2", self.conv1.out_channels, c_default, 3, 1, depthwise, act)
        self.use_add = shortcut
        if shortcut and self.conv2.out_channels != c_in:
            raise UserError(f"residual block {name} needs equal input and output widths, "
                            f"spec gives {c_in} and {self.conv2.out_channels}")

    @property
    def out_channels(self) -> int:
        return self.conv2.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class CSPLayer(nn.Module):
    """CSP stage ``conv3(cat(m(conv1(x)), conv2(x)))``; blocks ``{name}.m.{i}``, depth key ``name``."""

    def __init__(self, w: Widths, name: str, c_in: int, c_out_default: int, n_default: int,
                 shortcut: bool = True, depthwise: bool = False, act: str = "silu") -> None:
        super().__init__()
        hidden = int(c_out_default * 0.5)
        self.conv1 = BaseConv(w, f"{name}.conv1", c_in, hidden, 1, act=act)
        self.conv2 = BaseConv(w, f"{name}.conv2", c_in, hidden, 1, act=act)
        n = w.depth(name, n_default)
        blocks = []
        c = self.conv1.out_channels
        for i in range(n):
            blocks.append(Bottleneck(w, f"{name}.m.{i}", c, hidden, shortcut, depthwise, act))
            c = blocks[-1].out_channels
        self.m = nn.Sequential(*blocks)
        self.conv3 = BaseConv(w, f"{name}.conv3", c + self.conv2.out_channels, c_out_default, 1, act=act)

    @property
    def out_channels(self) -> int:
        return self.conv3.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.m(self.conv1(x))  # (b, c_hidden, h, w)
        x2 = self.conv2(x)
        return self.conv3(torch.cat((x1, x2), 1))


class SPPBottleneck(nn.Module):
    """``conv1``, max-pools with kernels 5, 9, 13 side by side, concat with the input, ``conv2``."""

    def __init__(self, w: Widths, name: str, c_in: int, c_out_default: int,
                 kernels: tuple[int, ...] = (5, 9, 13), act: str = "silu") -> None:
        super().__init__()
        self.conv1 = BaseConv(w, f"{name}.conv1", c_in, c_in // 2, 1, act=act)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2) for k in kernels)
        c = self.conv1.out_channels * (len(kernels) + 1)
        self.conv2 = BaseConv(w, f"{name}.conv2", c, c_out_default, 1, act=act)

    @property
    def out_channels(self) -> int:
        return self.conv2.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [m(x) for m in self.m], 1))


class Focus(nn.Module):
    """Space-to-depth (b, c, h, w) -> (b, 4c, h/2, w/2), then a 3x3 conv."""

    def __init__(self, w: Widths, name: str, c_out_default: int, act: str = "silu") -> None:
        super().__init__()
        self.conv = BaseConv(w, f"{name}.conv", 3 * 4, c_out_default, 3, 1, act=act)

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # official order: top-left, bottom-left, top-right, bottom-right
        x = torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1)
        return self.conv(x)


class CSPDarknet(nn.Module):
    """Focus stem and dark2..dark5 (down-sampling conv + CSP stage; SPP before the last stage).

    Returns the dark3, dark4 and dark5 features (strides 8, 16, 32).
    """

    def __init__(self, w: Widths, name: str, dep_mul: float, wid_mul: float, depthwise: bool = False,
                 act: str = "silu") -> None:
        super().__init__()
        base_c = int(wid_mul * 64)
        base_d = max(round(dep_mul * 3), 1)
        self.stem = Focus(w, f"{name}.stem", base_c, act)
        c = self.stem.out_channels
        stages = {}
        for i, (stage, mult, depth) in enumerate(
            [("dark2", 2, base_d), ("dark3", 4, base_d * 3), ("dark4", 8, base_d * 3), ("dark5", 16, base_d)]
        ):
            prefix = f"{name}.{stage}"
            down = make_conv(w, f"{prefix}.0", c, base_c * mult, 3, 2, depthwise, act)
            layers: list[nn.Module] = [down]
            c = down.out_channels
            if i == 3:
                layers.append(SPPBottleneck(w, f"{prefix}.1", c, base_c * mult, act=act))
                c = layers[-1].out_channels
            last = len(layers)
            layers.append(CSPLayer(w, f"{prefix}.{last}", c, base_c * mult, depth, shortcut=i < 3,
                                   depthwise=depthwise, act=act))
            c = layers[-1].out_channels
            stages[stage] = nn.Sequential(*layers)
        self.dark2 = stages["dark2"]
        self.dark3 = stages["dark3"]
        self.dark4 = stages["dark4"]
        self.dark5 = stages["dark5"]
        self.out_channels = [stage[-1].out_channels for stage in (self.dark3, self.dark4, self.dark5)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.dark2(self.stem(x))  # (b, 2c, h/4, w/4)
        c3 = self.dark3(x)  # (b, 4c, h/8, w/8)
        c4 = self.dark4(c3)  # (b, 8c, h/16, w/16)
        c5 = self.dark5(c4)  # (b, 16c, h/32, w/32)
        return c3, c4, c5
