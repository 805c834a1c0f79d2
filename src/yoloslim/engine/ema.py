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
HORIZON_SHARE = 0.025  # and at most this share of the run's epochs (YOLOv5's 10,000 updates are 1.8 % of COCO's 300)
RAMP_EPOCHS = 1.0  # and a ramp of at most this many epochs


def run_horizon(epochs: int) -> float:
    """Epochs the training EMA averages over in a run of ``epochs``: :data:`HORIZON_SHARE` of it, at most
    :data:`HORIZON_EPOCHS`.

    A short run is still learning at its end, and a long average lags behind it: the demo's 40 epochs
    of YOLOv5n from scratch end at mAP@.5 0.536 averaged over one epoch, 0.511 over five
    (docs/BENCHMARKS.md, session 15). From 200 epochs on, the average spans the five epochs that helped
    fine-tunes mid-run.
    """
    return min(HORIZON_EPOCHS, HORIZON_SHARE * max(int(epochs), 1))


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
        training: :func:`run_horizon`) and ramps up over at most :data:`RAMP_EPOCHS`. An average of one
        update or less is no average: the raw weights (d = 0).
        """
        n = max(int(updates_per_epoch), 1)
        decay = max(0.0, min(DECAY, 1 - 1 / max(horizon_epochs * n, 1.0)))
        return cls(model, decay=decay, tau=min(TAU, RAMP_EPOCHS * n))

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
