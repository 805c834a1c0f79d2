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

A constant L1 strength moves each γ by about lr·sr per step, so whether the γ separate within a
budget depends on lr, the optimiser and the number of steps (Adam caps every step near lr). A
*target* (``--sparsity-target 0.5``, or ``--sparsity auto``) asks for the result instead: the
strength comes from the schedule, so that the requested fraction of prunable γ ends below the
threshold. It shrinks the currently smallest |γ| directly (a proximal L1 step, soft-thresholding,
as in Sparse Structure Selection, Huang & Wang 2018, arXiv:1707.01213), restricted to the
fraction that is due: that fraction grows along the cubic ramp of gradual magnitude pruning (Zhu &
Gupta 2017, arXiv:1710.01878) from 10 % to 75 % of the run's batches, and each selected γ is
shrunk by ``q / remaining`` per batch (``q`` the largest selected |γ|), so that all of them reach 0
by the end of the ramp; afterwards the smallest ``target`` fraction is held at 0. Channels keep
their gradients throughout: one the loss needs grows back out of the selection and another takes
its place. The γ histogram splits into a spike at 0 and the channels that carry the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from yoloslim.errors import UserError
from yoloslim.models.io import unwrap
from yoloslim.prune.graph import ChannelGraph

SCHEDULES = ("constant", "linear")
# fractions of a target run's batches where the selected fraction starts to grow and reaches the target
TARGET_RAMP = (0.1, 0.75)


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
    """L1 on the γ (and optionally β) of the prunable batch norms: a fixed strength, or a target fraction.

    Args:
        model: the model to train (its graph is traced once here).
        sr: strength; the YOLOv5 slimming forks use 1e-4 .. 1e-3 (0 with a ``target``).
        schedule: ``constant``, or ``linear`` = ``sr·(1 − 0.9·epoch/epochs)``.
        bias: also add ``sr·sign(β)`` to β's gradient (``--sparsity-bias``).
        graph: a graph already traced from ``model`` (traced here when None).
        target: fraction of prunable γ to bring to 0 by the run's end, strength from the schedule
            (see the module docstring); 0 = a fixed ``sr``.
        batches_per_epoch: batches in one epoch (``apply`` is called once per batch); needed with a
            ``target``.
    """

    def __init__(self, model: nn.Module, sr: float, schedule: str = "constant", bias: bool = False,
                 graph: ChannelGraph | None = None, target: float = 0.0, batches_per_epoch: int = 0) -> None:
        if sr < 0:
            raise UserError(f"--sparsity must be >= 0, got {sr}")
        if schedule not in SCHEDULES:
            raise UserError(f"--sparsity-schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        check_target(target)
        if target > 0 and sr > 0:
            raise UserError("give --sparsity SR (a fixed strength) or --sparsity-target F (a fraction), not both")
        if target > 0 and batches_per_epoch < 1:
            raise ValueError("BNSparsity: a target needs batches_per_epoch")
        self.sr = sr
        self.schedule = schedule
        self.bias = bias
        self.target = target
        self.batches_per_epoch = batches_per_epoch
        self.graph = graph or ChannelGraph.trace(model)
        self.masks = prunable_bn_masks(self.graph)
        self._cache: tuple[int, list[tuple[nn.BatchNorm2d, torch.Tensor]]] | None = None
        self._epoch, self._calls = -1, 0  # batches seen in the current epoch (target mode)
        self._zeroed: dict[str, torch.Tensor] = {}  # target mode: BN name -> the rows the last shrink set to 0

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

        Call after ``backward()`` and before ``optimizer.step()`` (after unscaling under AMP), once
        per backward pass. With a ``target``, shrinks the selected γ in place instead and returns
        the shrink applied.
        """
        if self.target > 0:
            return self._shrink_towards_target(model, epoch, epochs)
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

    def due_fraction(self, it: int, total: int) -> float:
        """The fraction of prunable γ selected at batch ``it`` of ``total``: a cubic ramp from 0 to ``target``."""
        start, end = (round(f * total) for f in TARGET_RAMP)
        x = min(max((it - start) / max(end - start, 1), 0.0), 1.0)
        return self.target * (1 - (1 - x) ** 3)

    @torch.no_grad()
    def _shrink_towards_target(self, model: nn.Module, epoch: int, epochs: int) -> float:
        if epoch != self._epoch:
            self._epoch, self._calls = epoch, 0
        it, total = epoch * self.batches_per_epoch + self._calls, epochs * self.batches_per_epoch
        self._calls += 1
        pairs = self._targets(model)
        if not pairs:
            return 0.0
        flat = torch.cat([bn.weight.detach().abs()[mask.bool()] for bn, mask in pairs])  # (n,) prunable |γ|
        k = math.ceil(self.due_fraction(it, total) * flat.numel())
        if k == 0:
            return 0.0
        smallest, index = flat.topk(k, largest=False)
        remaining = round(TARGET_RAMP[1] * total) - it
        lam = float(smallest[-1]) / remaining if remaining > 0 else math.inf
        selected = torch.zeros_like(flat, dtype=torch.bool)
        selected[index] = True
        offset, zeroed = 0, {}
        for name, (bn, mask) in zip(self.masks, pairs, strict=True):
            rows = mask.bool().nonzero().flatten()  # (m,) the prunable channels of this BN
            pick = rows[selected[offset:offset + rows.numel()]]
            offset += rows.numel()
            if pick.numel():
                w = bn.weight.data
                w[pick] = torch.sign(w[pick]) * (w[pick].abs() - lam).clamp(min=0.0)
                zeroed[name] = pick[w[pick] == 0]
        self._zeroed = zeroed
        return lam

    @torch.no_grad()
    def hold_zeros(self, ema_model: nn.Module) -> None:
        """With a target: the γ the last shrink set to 0 in the trained model are 0 in ``ema_model`` too.

        Call after the EMA update. The EMA averages over epochs, so the saved (EMA) model would not
        show the sparsity without this. The γ that were shrunk to 0 are known from the shrink itself:
        the optimizer step after it moves them off 0 again (by 1e-6..1e-4), until the next shrink.
        """
        if self.target <= 0 or not self._zeroed:
            return
        ema_model = unwrap(ema_model)
        for name, rows in self._zeroed.items():
            ema_model.get_submodule(name).weight[rows] = 0.0

    def gamma_stats(self, model: nn.Module, threshold: float = 1e-2, bins: int = 50) -> GammaStats:
        """|γ| statistics of the prunable channels (what the penalty acts on)."""
        values = torch.cat([bn.weight.detach().abs().float().cpu()[mask.bool().cpu()]
                            for bn, mask in self._targets(model)]) if self.masks else torch.zeros(0)
        return GammaStats.of(values, threshold, bins)


def check_target(target: float) -> None:
    """A sparsity target must be a fraction in [0, 1)."""
    if not 0.0 <= target < 1.0:
        raise UserError(f"--sparsity-target must be a fraction in [0, 1), got {target}")


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
