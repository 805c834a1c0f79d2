"""Exponential moving average of a model's weights (what validation and the saved models use)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from yoloslim.models.io import unwrap

DECAY = 0.9999  # YOLOv5's and ultralytics' asymptotic decay: an average over ~10,000 updates
TAU = 2000.0  # their ramp-up, in updates: about one COCO epoch at batch 64 (1,849 updates)
HORIZON_EPOCHS = 5.0  # at most this many epochs of averaging: 1 − d ≥ 1 / (HORIZON_EPOCHS · updates per epoch)
RAMP_EPOCHS = 1.0  # and a ramp of at most this many epochs


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

    def __init__(self, model: nn.Module, decay: float = DECAY, tau: float = TAU,
                 updates: int = 0) -> None:
        self.ema = copy.deepcopy(unwrap(model)).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    @classmethod
    def for_epoch_length(cls, model: nn.Module, updates_per_epoch: int,
                         horizon_epochs: float = HORIZON_EPOCHS) -> ModelEMA:
        """An EMA whose averaging and ramp are measured in epochs as well as updates.

        With 2,000 updates per epoch or more this is YOLOv5's EMA (:data:`DECAY`, :data:`TAU`); on COCO
        at batch 64 it is within 1e-5 of it. Those constants count updates, so on a small data set they
        never take hold: at 38 updates per epoch (300 images, batch 8) d reaches 0.85 only after 100
        epochs, an average over the last ~7 updates, and the saved weights are as noisy as the raw
        ones. Here the average spans at most ``horizon_epochs`` epochs (:data:`HORIZON_EPOCHS` in
        training) and ramps up over at most :data:`RAMP_EPOCHS`.
        """
        n = max(int(updates_per_epoch), 1)
        return cls(model, decay=min(DECAY, 1 - 1 / (horizon_epochs * n)), tau=min(TAU, RAMP_EPOCHS * n))

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
