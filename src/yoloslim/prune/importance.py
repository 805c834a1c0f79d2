"""Importance: how much each channel of a coupled group matters, one class per published method.

``Importance.__call__(model, group)`` returns a ``(group.size,)`` tensor, higher = keep; a group's
score aggregates every coupled member (BNScale: max, FilterNorm: mean), so a channel shared by a
residual chain is judged by all the layers that would lose it. ``None`` means the method cannot
score the group (e.g. no batch norm for network slimming); allocation then leaves it whole.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from yoloslim.prune.graph import Group

REDUCTIONS = ("mean", "max", "sum")


def normalized(scores: torch.Tensor | None) -> torch.Tensor | None:
    """Scores divided by their mean (Torch-Pruning's ``normalizer="mean"``): makes groups comparable in one
    global ranking (a wide, weakly scaled layer no longer loses everything to a narrow, strong one)."""
    if scores is None:
        return None
    return scores / scores.mean().clamp_min(1e-12)


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
            w = model.get_submodule(name).weight.detach()[group.rows(name)].float().cpu()  # (size, in, kh, kw)
            scores.append(w.flatten(1).norm(p=self.p, dim=1))
        return self.reduce(scores)


Slice = tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


def _slices(model: nn.Module, group: Group) -> list[Slice]:
    """Every parameter a group's channels take with them, each with a function that cuts the group's rows
    out of it (or out of its gradient) as ``(size, -1)``: producers' output filters, consumers' input
    slices, depthwise filters, the batch norms' γ and β."""
    n = group.size
    out: list[Slice] = []
    for name in group.producers:
        rows = group.rows(name)  # the group's output rows of (out, in, kh, kw)
        out.append((model.get_submodule(name).weight, lambda t, r=rows: t[r].reshape(n, -1)))
    for mem in group.consumers:
        out.append((model.get_submodule(mem.module).weight,  # (out, in, kh, kw): the group's input columns
                    lambda t, o=mem.offset: t[:, o:o + n].transpose(0, 1).reshape(n, -1)))
    for mem in group.depthwise:
        out.append((model.get_submodule(mem.module).weight, lambda t, o=mem.offset: t[o:o + n].reshape(n, -1)))
    for mem in group.bns:
        bn = model.get_submodule(mem.module)
        for t in (bn.weight, bn.bias):
            if t is not None:
                out.append((t, lambda x, o=mem.offset: x[o:o + n].reshape(n, -1)))
    return out


class GroupNorm(Importance):
    """DepGraph, Fang et al. 2023, arXiv:2301.12900 (Torch-Pruning's GroupNormImportance): the L2 norm of
    everything a channel takes with it.

    One score per channel of a coupled group over EVERY member's weights: the producers' output
    filters, the consumers' input slices, depthwise filters and the batch norms' γ and β. A channel
    whose filter is large but whose readers ignore it scores low; Li et al.'s filter norm sees only
    the first half. ``normalize`` divides by the group's mean, for one global ranking.
    """

    def __init__(self, normalize: bool = False) -> None:
        super().__init__("sum")
        self.normalize = normalize

    @torch.no_grad()
    def __call__(self, model: nn.Module, group: Group) -> torch.Tensor | None:
        scores = self.reduce([cut(p.detach()).float().cpu().pow(2).sum(1) for p, cut in _slices(model, group)])
        scores = scores.sqrt() if scores is not None else None
        return normalized(scores) if self.normalize else scores


class Taylor(Importance):
    """First-order Taylor, Molchanov et al. 2019, arXiv:1906.10771: the loss change a channel's removal
    would cause, estimated as ``Σ |w · ∂L/∂w|`` over every weight the channel takes with it (producers,
    consumers, depthwise filters, batch norms, as :class:`GroupNorm` collects them).

    Needs gradients in ``.grad``: :func:`yoloslim.prune.gradients.accumulate_gradients` sums them over
    a few batches of the training data first. ``normalize`` divides by the group's mean.
    """

    def __init__(self, normalize: bool = False) -> None:
        super().__init__("sum")
        self.normalize = normalize

    @torch.no_grad()
    def __call__(self, model: nn.Module, group: Group) -> torch.Tensor | None:
        parts = []
        for p, cut in _slices(model, group):
            if p.grad is None:
                raise ValueError("Taylor importance needs gradients: run accumulate_gradients(model, ...) first")
            parts.append((cut(p.detach()) * cut(p.grad)).float().cpu().abs().sum(1))
        scores = self.reduce(parts)
        return normalized(scores) if self.normalize else scores


def importance_for(method: str, global_rank: bool = False) -> Importance:
    """The importance of a CLI method name: ``slim``, ``l1``, ``l2``, ``group`` or ``taylor``.

    ``group`` and ``taylor`` normalise each group's scores when ranked globally.
    """
    table = {"slim": BNScale, "l1": lambda: FilterNorm(1), "l2": lambda: FilterNorm(2),
             "group": lambda: GroupNorm(normalize=global_rank), "taylor": lambda: Taylor(normalize=global_rank)}
    if method not in table:
        raise ValueError(f"no channel importance for method {method!r}")
    return table[method]()
