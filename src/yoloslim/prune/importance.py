"""Importance: how much each channel of a coupled group matters, one class per published method.

``Importance.__call__(model, group)`` returns a ``(group.size,)`` tensor, higher = keep; a group's
score aggregates every coupled member (BNScale: max, FilterNorm: mean), so a channel shared by a
residual chain is judged by all the layers that would lose it. ``None`` means the method cannot
score the group (e.g. no batch norm for network slimming); allocation then leaves it whole.
"""

from __future__ import annotations

import torch
from torch import nn

from yoloslim.prune.graph import Group

REDUCTIONS = ("mean", "max", "sum")


class Importance:
    """Base class: score every channel of a group."""

    def __init__(self, reduction: str = "mean") -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def __call__(self, model: nn.Module, group: Group) -> torch.Tensor | None:
        raise NotImplementedError

    def reduce(self, scores: list[torch.Tensor]) -> torch.Tensor | None:
        if not scores:
            return None
        stacked = torch.stack(scores)  # (members, size)
        if self.reduction == "max":
            return stacked.amax(0)
        return stacked.sum(0) if self.reduction == "sum" else stacked.mean(0)


class BNScale(Importance):
    """Network Slimming, Liu et al. 2017, arXiv:1708.06519: |γ| of the batch norms over the channels.

    Sparsity training (:mod:`yoloslim.prune.sparsity`) pushes the γ of unneeded channels toward zero;
    one global threshold on |γ| then decides what goes. Coupled batch norms are reduced with ``max``
    by default: the threshold rule "remove a channel whose γ is below it" then removes a coupled
    channel only when it is below the threshold in EVERY batch norm that would lose it.
    """

    def __init__(self, reduction: str = "max") -> None:
        super().__init__(reduction)

    @torch.no_grad()
    def __call__(self, model: nn.Module, group: Group) -> torch.Tensor | None:
        scores = []
        for mem in group.bns:
            bn = model.get_submodule(mem.module)
            scores.append(bn.weight.detach().abs()[mem.offset:mem.offset + group.size].float().cpu())
        return self.reduce(scores)


class FilterNorm(Importance):
    """Pruning Filters for Efficient ConvNets, Li et al. 2017, arXiv:1608.08710: the Lp norm of each filter.

    The score of channel ``i`` is the norm of output filter ``i`` of the convs producing the group
    (``p=1``: sum of absolute weights, as in the paper; ``p=2``: Euclidean norm).
    """

    def __init__(self, p: int = 1, reduction: str = "mean") -> None:
        super().__init__(reduction)
        if p not in (1, 2):
            raise ValueError(f"p must be 1 or 2, got {p}")
        self.p = p

    @torch.no_grad()
    def __call__(self, model: nn.Module, group: Group) -> torch.Tensor | None:
        scores = []
        for name in group.producers:
            w = model.get_submodule(name).weight.detach().float().cpu()  # (out, in, kh, kw)
            scores.append(w.flatten(1).norm(p=self.p, dim=1))
        return self.reduce(scores)


def importance_for(method: str) -> Importance:
    """The importance of a CLI method name: ``slim``, ``l1`` or ``l2``."""
    table = {"slim": BNScale, "l1": lambda: FilterNorm(1), "l2": lambda: FilterNorm(2)}
    if method not in table:
        raise ValueError(f"no channel importance for method {method!r}")
    return table[method]()
