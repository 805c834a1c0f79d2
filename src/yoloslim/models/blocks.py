"""Building blocks shared by the YOLO families.

Module and attribute names follow the reference implementations (``conv``, ``bn``, ``act``,
``cv1`` ...) so that their checkpoints load as plain state dicts.
"""

from __future__ import annotations

import torch
from torch import nn


def autopad(k: int, p: int | None = None, d: int = 1) -> int:
    """'Same' padding for an odd kernel."""
    if p is None:
        p = (d * (k - 1) + 1) // 2
    return p


def make_act(name: str) -> nn.Module:
    """Activation by name: ``silu`` (YOLOv5/YOLOX), ``leaky`` (darknet, slope 0.1), ``relu``, ``relu6``, ``linear``."""
    acts = {
        "silu": lambda: nn.SiLU(inplace=True),
        "leaky": lambda: nn.LeakyReLU(0.1, inplace=True),
        "lrelu": lambda: nn.LeakyReLU(0.1, inplace=True),
        "relu": lambda: nn.ReLU(inplace=True),
        "relu6": lambda: nn.ReLU6(inplace=True),
        "hardswish": lambda: nn.Hardswish(inplace=True),
        "linear": nn.Identity,
    }
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(acts)}")
    return acts[name]()


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + activation."""

    def __init__(
        self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, act: str = "silu",
        bn_eps: float = 1e-3, bn_momentum: float = 0.03,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=bn_eps, momentum=bn_momentum)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 then 3x3 conv with an optional residual add (YOLOv5 / CSPDarknet).

    ``c_in`` is the block's input width; the residual add is kept only when the output width equals it.
    """

    def __init__(self, c_in: int, c_mid: int, c_out: int, shortcut: bool = True, act: str = "silu", **bn) -> None:
        super().__init__()
        self.cv1 = Conv(c_in, c_mid, 1, 1, act=act, **bn)
        self.cv2 = Conv(c_mid, c_out, 3, 1, act=act, **bn)
        self.add = shortcut and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dim``."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.d = dim

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, self.d)


def run_layers(layers: nn.Sequential, save: list[int], x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
    """Run a layer table built the way the YOLOv5 yaml files describe it (YOLOv5, YOLOv8 / YOLO11).

    Each layer has ``f``, where its input comes from (-1: the previous layer; an index, or a list of them
    for a concat or the head), and ``i``, its index; the outputs of the layers in ``save`` are kept for the
    layers that read them later.
    """
    outputs: list[torch.Tensor | None] = []
    for m in layers:
        if m.f != -1:
            x = outputs[m.f] if isinstance(m.f, int) else [x if j == -1 else outputs[j] for j in m.f]
        x = m(x)
        outputs.append(x if m.i in save else None)
    return x
