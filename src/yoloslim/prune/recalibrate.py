"""Batch-norm recalibration: re-estimate every BN's running statistics of a pruned model on real images.

Pruning removes channels whose (small but non-zero) activations fed the next layers; the batch
norms after them keep the running mean / variance of the unpruned network, so their normalised
outputs drift, and the drift compounds layer after layer (the official YOLOv3-tiny pruned at
``l1 0.3`` finds nothing until recalibrated; see ``docs/BENCHMARKS.md``). A forward pass in train
mode, without gradients, over a few hundred images re-estimates those statistics; nothing else
changes. The idea is the "BN re-calibration" of EagleEye (Li et al. 2020, arXiv:2007.02491) and of
the "adaptive BN" used to judge pruned candidates.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from yoloslim.errors import UserError
from yoloslim.log import logger

# A few hundred images: a BN's running mean / variance is an average over every pixel of every image,
# so it settles after a few dozen images (the 50 photos already recovered YOLOv3-tiny); 256
# costs one evaluation-sized forward pass and leaves the estimate's noise far below the pruning damage.
CALIB_IMAGES = 256


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], max_images: int | None = None) -> int:
    """Re-estimate the running mean and variance of every batch norm of ``model`` from ``batches``.

    Only the batch norms run in train mode (the rest of the model stays in eval mode), with
    ``momentum=None``: the new statistics are the cumulative average over all the batches, not an
    exponential one that the last batch would dominate. Weights, biases and every other tensor are
    untouched; each module's mode and each BN's momentum are restored afterwards.

    Args:
        model: the model, changed in place.
        batches: model inputs, ``(b, 3, h, w)`` float tensors already preprocessed for ``model``.
        max_images: stop after this many images (None: use every batch).

    Returns:
        The number of images used.

    Raises:
        UserError: ``batches`` yields no image.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in bns}
    saved = {bn: (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
             for bn in bns}
    seen = 0
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        for x in batches:
            if max_images is not None:
                x = x[:max_images - seen]
            if len(x) == 0:
                break
            model(x)
            seen += len(x)
            if max_images is not None and seen >= max_images:
                break
    finally:
        for bn in bns:
            bn.momentum = momenta[bn]
        for m, training in modes.items():
            m.train(training)
        if seen == 0:  # no image: put the old statistics back rather than leave them reset
            for bn, (mean, var, count) in saved.items():
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(count)
    if seen == 0:
        raise UserError("BN recalibration got no image (is the --calib source empty?)")
    logger.info(f"recalibrated {len(bns)} batch norms on {seen} images")
    return seen
