"""Optimiser choice, learning-rate schedule and warm-up, as plain functions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from yoloslim.errors import UserError

# names of the three parameter groups, in the optimiser's order
GROUPS = ("bias", "weight", "bn_weight")
# what ``--optimizer`` accepts (case-insensitive)
OPTIMIZERS = ("SGD", "Adam", "AdamW", "auto")
# ``auto`` picks SGD above this many optimiser steps (at the nominal batch), AdamW at or below it
AUTO_SGD_ABOVE_STEPS = 10_000
# gradients are accumulated to this many images per step (YOLOv5's and ultralytics' nbs), except on a
# short ``auto`` run (see :func:`nominal_batch_for`)
NOMINAL_BATCH = 64


@dataclass(frozen=True)
class OptimizerChoice:
    """What a run optimises with: the torch optimiser's name and the settings ``auto`` may replace.

    Attributes:
        name: ``SGD``, ``Adam`` or ``AdamW``.
        lr: initial learning rate (the schedule's 1.0).
        momentum: SGD momentum, or Adam's β1.
        warmup_bias_lr: the bias group's learning rate at the start of warm-up.
    """

    name: str
    lr: float
    momentum: float
    warmup_bias_lr: float


def optimizer_name(name: str) -> str:
    """The canonical spelling of ``name`` (one of :data:`OPTIMIZERS`, any case); a clear error otherwise."""
    canon = {o.lower(): o for o in OPTIMIZERS}.get(str(name).lower())
    if canon is None:
        raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    return canon


def optimizer_steps(n_images: int, batch: int, nominal_batch: int, epochs: int) -> int:
    """Optimiser steps of a run at the nominal batch, as ``auto`` counts them: ⌈n / max(batch, nbs)⌉·epochs."""
    return math.ceil(n_images / max(batch, nominal_batch)) * epochs


def nominal_batch_for(requested: int, optimizer: str, n_images: int, batch: int, epochs: int) -> int:
    """The nominal batch a run accumulates to: ``requested`` when given (> 0), else (auto) the batch itself
    (a step on every batch) for ``--optimizer auto`` on a short run, :data:`NOMINAL_BATCH` otherwise.

    On a short budget the optimiser steps are what is scarce: YOLOv5n, 30 epochs of 320 images at
    160 px, ``auto`` reached mAP@.5:.95 0.061 stepping on every batch of 16 against 0.022 accumulating
    to 64 (docs/BENCHMARKS.md, "short budgets"). ``--optimizer SGD`` keeps YOLOv5's 64.
    """
    if requested > 0:
        return requested
    short = optimizer_steps(n_images, batch, NOMINAL_BATCH, epochs) <= AUTO_SGD_ABOVE_STEPS
    return batch if optimizer.lower() == "auto" and short else NOMINAL_BATCH


FEW_STEPS = 500  # below this many optimiser steps, accumulating batches costs a run more than it gives


def few_steps_advice(requested: int, optimizer: str, nominal_batch: int, batch: int, steps: int) -> str | None:
    """A warning for a short run that accumulates batches because the optimiser was named: ``--optimizer
    SGD|Adam|AdamW`` keeps YOLOv5's nominal batch of 64, so on a small data set a run can take only a few
    dozen optimiser steps (a label-free recovery of 54 images, 20 epochs at batch 8: 20 steps, against
    120-140 for ``auto``). None when ``--nominal-batch`` was given (a resumed run's recorded nominal batch counts
    as given, so a resume does not repeat the warning), nothing accumulates or the run is long."""
    if requested > 0 or nominal_batch <= batch or steps >= FEW_STEPS or optimizer.lower() == "auto":
        return None
    plural = "" if steps == 1 else "s"
    return (f"only {steps} optimiser step{plural}: --optimizer {optimizer} accumulates "
            f"{round(nominal_batch / batch)} batches of {batch} into each (nominal batch {nominal_batch}); on a run "
            f"this short, --nominal-batch {batch} steps on every batch, as --optimizer auto does")


def choose_optimizer(name: str, lr0: float, momentum: float, warmup_bias_lr: float, steps: int,
                     nc: int) -> OptimizerChoice:
    """Resolve ``--optimizer`` (``auto`` included) into an optimiser and its learning rate.

    ``auto`` chooses as the ultralytics trainer documents: for a long run (more than
    :data:`AUTO_SGD_ABOVE_STEPS` optimiser steps) SGD with lr 0.01 and momentum 0.9; for a short
    one AdamW with ``lr = round(0.002·5 / (4 + nc), 6)`` and β1 0.9; either way the bias warm-up
    starts from 0. ``auto`` so replaces ``lr0``, ``momentum`` and ``warmup_bias_lr`` of the hyp. An
    explicit name keeps them, except that Adam and AdamW start the bias warm-up from 0 too (a bias
    learning rate of 0.1 throws Adam's normalised steps far off). ``SGD`` with the default hyp is
    the YOLOv5 recipe.

    Args:
        name: one of :data:`OPTIMIZERS` (any case).
        lr0: the hyp's initial learning rate.
        momentum: the hyp's momentum (β1 for Adam).
        warmup_bias_lr: the hyp's bias learning rate at the start of warm-up.
        steps: optimiser steps of the run (:func:`optimizer_steps`).
        nc: number of classes.
    """
    name = optimizer_name(name)
    if name == "auto":
        if steps > AUTO_SGD_ABOVE_STEPS:
            name, lr0, momentum = "SGD", 0.01, 0.9
        else:
            name, lr0, momentum = "AdamW", round(0.002 * 5 / (4 + nc), 6), 0.9
        warmup_bias_lr = 0.0
    elif name != "SGD":
        warmup_bias_lr = 0.0
    return OptimizerChoice(name, lr0, momentum, warmup_bias_lr)


def build_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float,
                    name: str = "SGD") -> torch.optim.Optimizer:
    """SGD (Nesterov), Adam or AdamW with three parameter groups.

    Group 0 holds every bias (no decay; its warm-up starts from ``warmup_bias_lr``), group 1 the
    conv and linear weights (with ``weight_decay``: L2 for SGD and Adam, decoupled for AdamW), group
    2 the normalisation weights (no decay).

    Args:
        model: the model (not a DDP wrapper, or one: parameters are the same).
        lr: initial learning rate.
        momentum: SGD momentum, or Adam's β1 (β2 is 0.999).
        weight_decay: weight decay for group 1.
        name: ``SGD``, ``Adam`` or ``AdamW`` (any case; resolve ``auto`` with :func:`choose_optimizer`).
    """
    kind = optimizer_name(name)
    if kind == "auto":
        raise ValueError("build_optimizer: resolve 'auto' with choose_optimizer first")
    bias, weight, bn_weight = [], [], []
    norm_types = tuple(v for k, v in nn.__dict__.items() if "Norm" in k and isinstance(v, type))
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if pname == "bias":
                bias.append(p)
            elif isinstance(module, norm_types):
                bn_weight.append(p)
            else:
                weight.append(p)
    if kind == "SGD":
        opt: torch.optim.Optimizer = torch.optim.SGD(bias, lr=lr, momentum=momentum, nesterov=True,
                                                     weight_decay=0.0)
    else:
        adam = torch.optim.Adam if kind == "Adam" else torch.optim.AdamW
        opt = adam(bias, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
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


def warmup_iterations(warmup_epochs: float, batches: int, min_iters: int = 100) -> int:
    """Warm-up length in iterations (batches): ``warmup_epochs`` epochs of ``batches``, at least ``min_iters``
    (YOLOv5's floor of 100; 0 for ultralytics 8.x's recipe), none when ``warmup_epochs`` is 0."""
    return max(round(warmup_epochs * batches), min_iters) if warmup_epochs > 0 else 0


def warmup(opt: torch.optim.Optimizer, it: int, n_warmup: int, factor: float, momentum: float,
           warmup_momentum: float, warmup_bias_lr: float) -> None:
    """Interpolate learning rates and momentum over the first ``n_warmup`` iterations.

    The bias learning rate falls from ``warmup_bias_lr`` and the others rise from 0, all towards
    ``initial_lr · factor``; SGD's momentum rises from ``warmup_momentum`` to ``momentum`` (Adam's
    β1 stays as it is).
    """
    xi = [0, n_warmup]
    for j, g in enumerate(opt.param_groups):
        start = warmup_bias_lr if j == 0 else 0.0
        g["lr"] = float(np.interp(it, xi, [start, g["initial_lr"] * factor]))
        if "momentum" in g:
            g["momentum"] = float(np.interp(it, xi, [warmup_momentum, momentum]))


def warmup_accumulate(it: int, n_warmup: int, nominal: int, batch: int) -> int:
    """Batches to accumulate per step: rises from 1 to ``nominal / batch`` during warm-up."""
    target = max(round(nominal / batch), 1)
    if it <= n_warmup and n_warmup > 0:
        return max(1, int(np.interp(it, [0, n_warmup], [1, nominal / batch]).round()))
    return target
