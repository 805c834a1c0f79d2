"""Parameters and FLOPs, per layer and in total, counted by running the model once."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LayerRow:
    """One leaf module of the model: its name, type, channels in/out, parameters and FLOPs."""

    name: str
    kind: str
    c_in: int
    c_out: int
    params: int
    flops: int


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def profile(model: nn.Module, imgsz: int = 640) -> list[LayerRow]:
    """FLOPs (2 x multiply-adds; 4 per element for batch norm) of every conv, linear and BN for one ``imgsz`` image."""
    rows: list[LayerRow] = []
    hooks = []

    def hook(name: str):
        def fn(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            if isinstance(m, nn.Conv2d):
                macs = out.numel() // out.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
                rows.append(LayerRow(name, "Conv2d", m.in_channels, m.out_channels, count_params(m), 2 * macs))
            elif isinstance(m, nn.BatchNorm2d):
                # normalise (2) and scale-and-shift (2) per element: thop's count, times 2 as the repos report
                rows.append(LayerRow(name, "BatchNorm2d", m.num_features, m.num_features, count_params(m),
                                     4 * out.numel() // out.shape[0]))
            elif isinstance(m, nn.Linear):
                rows.append(LayerRow(name, "Linear", m.in_features, m.out_features, count_params(m),
                                     2 * m.in_features * m.out_features))
        return fn

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(1, 3, imgsz, imgsz, dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows


def conv_gflops(rows: list[LayerRow]) -> float:
    """GFLOPs of the convolutions alone (the figure darknet and the YOLOv5 repo print)."""
    return sum(r.flops for r in rows if r.kind == "Conv2d") / 1e9


def total_gflops(rows: list[LayerRow]) -> float:
    """GFLOPs of convolutions and batch norms (thop's count, the figure the YOLOX README prints)."""
    return sum(r.flops for r in rows) / 1e9
