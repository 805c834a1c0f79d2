"""Sparsity training: an L1 penalty on batch-norm γ, applied as one visible call between backward and step.

Network Slimming (Liu et al. 2017, arXiv:1708.06519) adds ``sr·sign(γ)`` (the sub-gradient of
``sr·|γ|``) to the gradient of every scaling factor, so that unneeded channels' γ shrink toward zero
and one global threshold can remove them. Only the batch norms of PRUNABLE channel groups are
penalised: shrinking a γ the pruner can never remove (the head's, or one tied to the input) only
costs accuracy. ::

    sparsity = BNSparsity(model, sr=1e-3, schedule="linear")
    loss.backward()
    sparsity.apply(model, epoch, epochs)
    optimizer.step()
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from yoloslim.errors import UserError
from yoloslim.models.io import unwrap
from yoloslim.prune.graph import ChannelGraph

SCHEDULES = ("constant", "linear")


def prunable_bn_masks(graph: ChannelGraph) -> dict[str, torch.Tensor]:
    """Batch norm name -> bool mask of its channels that belong to prunable groups."""
    masks: dict[str, torch.Tensor] = {}
    for name, call in graph.calls.items():
        if call.kind != "bn" or call.inputs is None:
            continue
        parts = [torch.full((n,), graph.groups[g].prunable) for g, n in call.inputs]
        mask = torch.cat(parts)
        if mask.any():
            masks[name] = mask
    return masks


class BNSparsity:
    """L1 sub-gradient on the γ (and optionally β) of the prunable batch norms.

    Args:
        model: the model to train (its graph is traced once here).
        sr: strength; the YOLOv5 slimming forks use 1e-4 .. 1e-3.
        schedule: ``constant``, or ``linear`` = ``sr·(1 − 0.9·epoch/epochs)``.
        bias: also add ``sr·sign(β)`` to β's gradient (``--sparsity-bias``).
        graph: a graph already traced from ``model`` (traced here when None).
    """

    def __init__(self, model: nn.Module, sr: float, schedule: str = "constant", bias: bool = False,
                 graph: ChannelGraph | None = None) -> None:
        if sr < 0:
            raise UserError(f"--sparsity must be >= 0, got {sr}")
        if schedule not in SCHEDULES:
            raise UserError(f"--sparsity-schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        self.sr = sr
        self.schedule = schedule
        self.bias = bias
        self.graph = graph or ChannelGraph.trace(model)
        self.masks = prunable_bn_masks(self.graph)
        self._cache: tuple[int, list[tuple[nn.BatchNorm2d, torch.Tensor]]] | None = None

    def strength(self, epoch: int, epochs: int) -> float:
        """The penalty at ``epoch`` (0-based) of ``epochs``."""
        if self.schedule == "linear" and epochs > 0:
            return self.sr * (1 - 0.9 * epoch / epochs)
        return self.sr

    def _targets(self, model: nn.Module) -> list[tuple[nn.BatchNorm2d, torch.Tensor]]:
        model = unwrap(model)
        if self._cache is None or self._cache[0] != id(model):
            pairs = []
            for name, mask in self.masks.items():
                bn = model.get_submodule(name)
                pairs.append((bn, mask.to(bn.weight.device, bn.weight.dtype)))
            self._cache = (id(model), pairs)
        return self._cache[1]

    @torch.no_grad()
    def apply(self, model: nn.Module, epoch: int = 0, epochs: int = 1) -> float:
        """Add the penalty's sub-gradient to the prunable γ (and β) gradients; returns the strength used.

        Call after ``backward()`` and before ``optimizer.step()`` (after unscaling under AMP).
        """
        s = self.strength(epoch, epochs)
        if s == 0:
            return s
        for bn, mask in self._targets(model):
            params = [bn.weight, bn.bias] if self.bias else [bn.weight]
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.add_(torch.sign(p.detach()) * mask, alpha=s)
        return s

    def gamma_stats(self, model: nn.Module, threshold: float = 1e-2, bins: int = 50) -> GammaStats:
        """|γ| statistics of the prunable channels (what the penalty acts on)."""
        values = torch.cat([bn.weight.detach().abs().float().cpu()[mask.bool().cpu()]
                            for bn, mask in self._targets(model)]) if self.masks else torch.zeros(0)
        return GammaStats.of(values, threshold, bins)


@dataclass
class GammaStats:
    """A histogram of |γ| and the fraction below a threshold."""

    values: torch.Tensor  # (n,) |γ|
    fraction_below: float
    threshold: float
    hist: list[int]
    edges: list[float]

    @classmethod
    def of(cls, values: torch.Tensor, threshold: float = 1e-2, bins: int = 50) -> GammaStats:
        if values.numel() == 0:
            return cls(values, 0.0, threshold, [], [])
        hi = float(values.max()) or 1.0
        hist = torch.histc(values, bins=bins, min=0.0, max=hi)
        edges = torch.linspace(0.0, hi, bins + 1)
        return cls(values, float((values < threshold).float().mean()), threshold,
                   [int(h) for h in hist.tolist()], edges.tolist())


def gamma_stats(model: nn.Module, graph: ChannelGraph | None = None, threshold: float = 1e-2,
                bins: int = 50) -> GammaStats:
    """|γ| of the prunable batch norms of ``model`` (traced when no ``graph`` is given)."""
    graph = graph or ChannelGraph.trace(model)
    model = unwrap(model)
    masks = prunable_bn_masks(graph)
    vals = [model.get_submodule(n).weight.detach().abs().float().cpu()[m] for n, m in masks.items()]
    return GammaStats.of(torch.cat(vals) if vals else torch.zeros(0), threshold, bins)


def save_gamma_histogram(stats: GammaStats, path: str | Path, title: str = "") -> Path:
    """Write a PNG histogram of |γ| (log-count axis), marking the threshold and the fraction below it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from yoloslim.models.io import atomic_write

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    try:
        if stats.hist:
            ax.stairs(stats.hist, stats.edges, fill=True, alpha=0.7)
            ax.set_yscale("symlog")
        ax.axvline(stats.threshold, color="red", lw=1, ls="--")
        ax.set_xlabel("|γ| of prunable batch norms")
        ax.set_ylabel("channels")
        ax.set_title(f"{title}  ({stats.fraction_below:.1%} below {stats.threshold:g})".strip())
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path
