"""Parameters and FLOPs, per layer and in total, counted by running the model once with hooks.

:func:`probe` / :func:`run_hooked` are the one way the package runs a model once with hooks (to count
FLOPs, to read feature maps, to measure output areas or the constants removed channels emit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ForwardHook = Callable[[nn.Module, tuple, Any], None]  # (module, inputs, output)
PreHook = Callable[[nn.Module, tuple], None]  # (module, inputs)


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
def run_hooked(model: nn.Module, x: torch.Tensor, hooks: Mapping[str, ForwardHook] | None = None,
               pre_hooks: Mapping[str, PreHook] | None = None) -> None:
    """Run ``model(x)`` once in eval mode without gradients, with hooks on named submodules.

    The model's training mode is restored and every hook removed afterwards, also when the forward fails.

    Args:
        model: any module.
        x: its input.
        hooks: submodule name -> forward hook ``fn(module, inputs, output)``.
        pre_hooks: submodule name -> forward pre-hook ``fn(module, inputs)``.
    """
    handles = [model.get_submodule(n).register_forward_hook(fn) for n, fn in (hooks or {}).items()]
    handles += [model.get_submodule(n).register_forward_pre_hook(fn) for n, fn in (pre_hooks or {}).items()]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def probe(model: nn.Module, imgsz: int, hooks: Mapping[str, ForwardHook] | None = None,
          pre_hooks: Mapping[str, PreHook] | None = None) -> None:
    """Run ``model`` once on one all-zero ``imgsz`` image (its dtype and device) with hooks: see :func:`run_hooked`."""
    p = next(model.parameters())
    run_hooked(model, torch.zeros(1, 3, imgsz, imgsz, dtype=p.dtype, device=p.device), hooks, pre_hooks)


def profile(model: nn.Module, imgsz: int = 640) -> list[LayerRow]:
    """FLOPs (2 x multiply-adds; 4 per element for batch norm) of every conv, linear and BN for one ``imgsz`` image."""
    rows: list[LayerRow] = []

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

    probe(model, imgsz, {name: hook(name) for name, m in model.named_modules()
                         if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))})
    return rows


def conv_gflops(rows: list[LayerRow]) -> float:
    """GFLOPs of the convolutions alone (the figure darknet and the YOLOv5 repo print)."""
    return sum(r.flops for r in rows if r.kind == "Conv2d") / 1e9


def total_gflops(rows: list[LayerRow]) -> float:
    """GFLOPs of convolutions and batch norms (thop's count, the figure the YOLOX README prints)."""
    return sum(r.flops for r in rows) / 1e9
