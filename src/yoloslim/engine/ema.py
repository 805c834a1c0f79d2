"""Exponential moving average of a model's weights (what validation and the saved models use)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from yoloslim.models.io import unwrap


class ModelEMA:
    """Keeps ``ema = d·ema + (1 − d)·model`` for every floating-point tensor of the state dict.

    The decay ramps up as ``d = decay · (1 − exp(−updates / tau))`` so that early, random weights
    are forgotten quickly. Floating-point buffers (BN running statistics) are averaged like the
    weights; other buffers (``num_batches_tracked``) are copied.

    Args:
        model: the model being trained (or its DDP wrapper).
        decay: the asymptotic decay.
        tau: ramp-up length in updates.
        updates: updates already done (when resuming).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0,
                 updates: int = 0) -> None:
        self.ema = copy.deepcopy(unwrap(model)).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the current weights of ``model`` into the average."""
        self.updates += 1
        d = self.current_decay()
        msd = unwrap(model).state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])

    def state_dict(self) -> dict:
        return {"weights": self.ema.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
