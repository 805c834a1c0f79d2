"""Optimiser, learning-rate schedule and warm-up, as plain functions."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

# names of the three parameter groups, in the optimiser's order
GROUPS = ("bias", "weight", "bn_weight")


def build_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with Nesterov momentum and three parameter groups.

    Group 0 holds every bias (no decay; its warm-up starts from ``warmup_bias_lr``), group 1 the
    conv and linear weights (with ``weight_decay``), group 2 the normalisation weights (no decay).

    Args:
        model: the model (not a DDP wrapper, or one: parameters are the same).
        lr: initial learning rate.
        momentum: momentum.
        weight_decay: L2 weight decay for group 1.
    """
    bias, weight, bn_weight = [], [], []
    norm_types = tuple(v for k, v in nn.__dict__.items() if "Norm" in k and isinstance(v, type))
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "bias":
                bias.append(p)
            elif isinstance(module, norm_types):
                bn_weight.append(p)
            else:
                weight.append(p)
    opt = torch.optim.SGD(bias, lr=lr, momentum=momentum, nesterov=True, weight_decay=0.0)
    opt.add_param_group({"params": weight, "weight_decay": weight_decay})
    opt.add_param_group({"params": bn_weight, "weight_decay": 0.0})
    for g in opt.param_groups:
        g["initial_lr"] = lr
    return opt


def lr_factor(epoch: int, epochs: int, lrf: float, cosine: bool) -> float:
    """Learning-rate multiplier at ``epoch``: from 1 down to ``lrf``, linearly or along a half cosine."""
    x = epoch / max(epochs, 1)
    if cosine:
        return ((1 - math.cos(x * math.pi)) / 2) * (lrf - 1) + 1
    return (1 - x) * (1.0 - lrf) + lrf


def set_epoch_lr(opt: torch.optim.Optimizer, factor: float) -> None:
    """Set every group's learning rate to ``initial_lr · factor`` (the schedule's step)."""
    for g in opt.param_groups:
        g["lr"] = g["initial_lr"] * factor


def warmup(opt: torch.optim.Optimizer, it: int, n_warmup: int, factor: float, momentum: float,
           warmup_momentum: float, warmup_bias_lr: float) -> None:
    """Interpolate learning rates and momentum over the first ``n_warmup`` iterations.

    The bias learning rate falls from ``warmup_bias_lr`` and the others rise from 0, all towards
    ``initial_lr · factor``; momentum rises from ``warmup_momentum`` to ``momentum``.
    """
    xi = [0, n_warmup]
    for j, g in enumerate(opt.param_groups):
        start = warmup_bias_lr if j == 0 else 0.0
        g["lr"] = float(np.interp(it, xi, [start, g["initial_lr"] * factor]))
        g["momentum"] = float(np.interp(it, xi, [warmup_momentum, momentum]))


def warmup_accumulate(it: int, n_warmup: int, nominal: int, batch: int) -> int:
    """Batches to accumulate per step: rises from 1 to ``nominal / batch`` during warm-up."""
    target = max(round(nominal / batch), 1)
    if it <= n_warmup and n_warmup > 0:
        return max(1, int(np.interp(it, [0, n_warmup], [1, nominal / batch]).round()))
    return target
