"""Detection losses, outside the models: one per family, chosen by ``model.spec.family``.

A family's loss is named by its record (:attr:`yoloslim.models.family.Family.loss`), built as
``cls(model, hyp)`` and called as
``loss_fn(raw_maps, targets) -> (loss × batch size, {"box": ..., "obj": ..., "cls": ...})`` with
``targets`` (N, 6) ``[img_idx, cls, cx, cy, w, h]`` normalised to 0..1. The item names are each
loss's own (YOLOX: iou, obj, cls, l1; YOLOv8: box, cls, dfl): the progress bar, results.csv and
results.png show whatever items the family's loss returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from yoloslim.hyp import load_hyp
from yoloslim.models import family_of
from yoloslim.models.io import unwrap

LossFn = Callable[[list[torch.Tensor], torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def make_loss(model: nn.Module, hyp: Any = None, imgsz: int = 640) -> LossFn:
    """The loss of ``model``'s family with the gains scaled as the reference trainer scales them.

    ``box`` is multiplied by ``3 / nl``, ``cls`` by ``nc / 80 · 3 / nl`` and ``obj`` by
    ``(imgsz / 640)² · 3 / nl``, where ``nl`` is the number of head levels; unless the loss class
    says ``SCALE_GAINS = False`` (YOLOv8's gains are used as they are).

    Args:
        model: the detector (or a DDP wrapper around it).
        hyp: a :class:`yoloslim.hyp.Hyp` (the family's defaults when None).
        imgsz: training image size.
    """
    spec = unwrap(model).spec
    if hyp is None:
        hyp = load_hyp(family=spec.family)
    loss_class = family_of(spec).loss_class()
    if getattr(loss_class, "SCALE_GAINS", True):
        hyp = scaled_gains(hyp, spec.nc, len(spec.strides), imgsz)
    return loss_class(model, hyp)


def scaled_gains(hyp: Any, nc: int, nl: int, imgsz: int) -> Any:
    """A copy of ``hyp`` with ``box``, ``obj`` and ``cls`` scaled for classes, levels and image size."""
    return dataclasses.replace(
        hyp,
        box=hyp.box * 3 / nl,
        cls=hyp.cls * nc / 80 * 3 / nl,
        obj=hyp.obj * (imgsz / 640) ** 2 * 3 / nl,
    )
