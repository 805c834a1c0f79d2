"""Pruning: coupled channel groups (graph), importance, allocation, surgery, layer pruning, sparsity.

The API the rest of yoloslim uses::

    from yoloslim.prune import PruneOptions, prune_model, BNSparsity
    result = prune_model(model, PruneOptions(method="slim", ratio=0.5))  # result.model is compact
    recalibrate_bn(result.model, batches)  # re-estimate its BN statistics on preprocessed image batches
    sparsity = BNSparsity(model, sr=1e-3)  # loss.backward(); sparsity.apply(model, epoch, epochs); opt.step()
"""

from yoloslim.prune.graph import ChannelGraph, Group
from yoloslim.prune.iterative import prune_in_steps
from yoloslim.prune.pipeline import METHODS, PruneOptions, PruneResult, prune_model
from yoloslim.prune.recalibrate import recalibrate_bn
from yoloslim.prune.sparsity import BNSparsity, GammaStats, gamma_stats

__all__ = ["METHODS", "BNSparsity", "ChannelGraph", "GammaStats", "Group", "PruneOptions", "PruneResult",
           "gamma_stats", "prune_in_steps", "prune_model", "recalibrate_bn"]
