"""Gradients of the detection loss for gradient-based importance (:class:`~yoloslim.prune.importance.Taylor`).

A few batches of the training data, the model in eval mode (batch norms use and keep their running
statistics), the family's own loss: ``.grad`` of every parameter holds the sum over the batches.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from yoloslim.data.dataset import DetectionDataset, create_loader, load_data
from yoloslim.data.source import DataSource
from yoloslim.errors import UserError
from yoloslim.loss import make_loss
from yoloslim.models.decode import preprocess

# batches of the train split the Taylor scores are summed over: enough for every channel's
# |w·grad| to rank stably on the benchmark's small models, a few seconds on a CPU
GRAD_BATCHES = 8


def accumulate_gradients(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                         imgsz: int) -> int:
    """Zero, then sum the loss gradients of ``model`` over ``batches`` of ``(imgs uint8, targets)``.

    Returns:
        The number of images.

    Raises:
        UserError: ``batches`` is empty.
    """
    loss_fn = make_loss(model, imgsz=imgsz)
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    seen = 0
    try:
        for imgs, targets in batches:
            loss, _ = loss_fn(model(preprocess(imgs, model.spec)), targets)
            loss.backward()
            seen += len(imgs)
    finally:
        model.train(was_training)
    if not seen:
        raise UserError("no training images to compute gradients on")
    return seen


def train_batches(data: str, imgsz: int, batch: int, batches: int = GRAD_BATCHES, workers: int = 0,
                  loaded: DataSource | None = None):
    """The first ``batches`` plain-letterboxed batches of a data set's train split, as ``(imgs, targets)``;
    ``loaded`` is the data set ``data`` names when the caller has read it already (it is not read again)."""
    samples = (loaded or load_data(data, warn=False)).splits.get("train") or []
    if not samples:
        raise UserError(f"{data}: no train split to compute gradients on")
    if len(samples) > batch * batches:  # a seeded choice: a data set listed by name may be sorted by class
        pick = np.sort(np.random.default_rng(0).choice(len(samples), batch * batches, replace=False))
        samples = [samples[i] for i in pick]
    loader = create_loader(DetectionDataset(samples, imgsz), batch_size=batch, shuffle=False, workers=workers)
    return [(imgs, targets) for imgs, targets, *_ in loader]
