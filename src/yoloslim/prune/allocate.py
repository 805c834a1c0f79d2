"""Allocation: how many channels each group keeps, and which ones.

Three allocations (:data:`ALLOCATIONS`). Two from the same scores: one global ranking over every
prunable channel (network slimming's single γ threshold; ``--global`` for the filter norms) or the
same ratio in every group (Li et al.'s per-layer pruning, the l1/l2 default). Then a floor
(``min_channels``) and rounding (``round_to``). A ratio that would empty a group is refused before
any weight is touched, with the largest safe ratio in the message. ``target_flops`` /
``target_params`` bisect the ratio with an analytic cost model until the pruned model lands within
2 % of the target. The third, from measured sensitivity curves, is :mod:`yoloslim.prune.sensitivity`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from yoloslim.errors import UserError
from yoloslim.log import logger
from yoloslim.models.io import unwrap
from yoloslim.models.profile import count_params, probe
from yoloslim.prune.graph import ChannelGraph, Group
from yoloslim.prune.importance import Importance
from yoloslim.prune.surgery import ChannelPlan

TARGET_TOLERANCE = 0.02  # relative distance to a FLOPs / params target
# --round-to's default: kept widths are multiples of 8 (or the group's whole width). The vectorised CPU
# kernels work in blocks of 8-16 channels: a YOLOv5n cut to 30 % of its FLOPs ran 1.29x faster with widths
# like 33, 65, 129 (round-to 1) and 1.69x with multiples of 8; round-to 16 ran no faster than 8 for 36 %
# more FLOPs (docs/BENCHMARKS.md, "Which pruned shapes run fastest").
ROUND_TO = 8
# --allocation: the same ratio in every group, one global ranking (--global), or the measured sensitivity
# curves (yoloslim.prune.sensitivity)
ALLOCATIONS = ("uniform", "global", "sensitivity")


@dataclass
class Counts:
    """Channels kept per group for one ratio, before choosing which ones."""

    keep: dict[int, int]
    emptied: list[int]  # groups the raw allocation would empty
    held: list[int]  # groups raised by the min_channels floor


class Allocator:
    """Turns per-channel scores of the selected groups into kept counts and kept indices.

    Args:
        groups: the groups to prune (prunable, scorable, selected by ``--include``).
        scores: group id -> ``(size,)`` scores, higher = keep.
        global_rank: one ranking over all channels (True) or the same ratio per group (False).
        round_to: kept widths are multiples of this (and at least this, unless the group is smaller);
            1 keeps exact counts.
        min_channels: floor on kept channels per group; 0 = refuse ratios that empty a group.
    """

    def __init__(self, groups: list[Group], scores: dict[int, torch.Tensor], global_rank: bool,
                 round_to: int = ROUND_TO, min_channels: int = 0) -> None:
        if round_to < 1:
            raise UserError(f"--round-to must be at least 1, got {round_to}")
        if min_channels < 0:
            raise UserError(f"--min-channels must be at least 0, got {min_channels}")
        self.groups = [g for g in groups if g.id in scores]
        self.scores = scores
        self.global_rank = global_rank
        self.round_to = round_to
        self.min_channels = min_channels
        self.total = sum(g.size for g in self.groups)
        self._relative: dict[int, list[float]] = {}  # group id -> its scores, sorted, over its best
        if self.global_rank and self.groups:
            flat = torch.cat([scores[g.id].float() for g in self.groups])
            owner = torch.cat([torch.full((g.size,), i) for i, g in enumerate(self.groups)])
            # ties (e.g. an untrained model's γ = 1) are broken by rank inside the group, which spreads
            # equal scores evenly over the groups instead of emptying the first ones
            rel = torch.cat([torch.argsort(torch.argsort(scores[g.id].float(), stable=True)).float() / g.size
                             for g in self.groups])
            by_rel = torch.sort(rel, stable=True).indices
            order = by_rel[torch.sort(flat[by_rel], stable=True).indices]
            self._owner_sorted = owner[order]  # group index of the k-th weakest channel
            pos = torch.empty_like(order)
            pos[order] = torch.arange(len(order))
            # a group is emptied once all its channels are removed: k > position of its strongest
            self._last = torch.zeros(len(self.groups), dtype=torch.long).scatter_reduce(0, owner, pos, "amax")

    def removed_counts(self, ratio: float) -> list[int]:
        if self.global_rank:
            k = int(round(ratio * self.total))
            return torch.bincount(self._owner_sorted[:k], minlength=len(self.groups)).tolist()
        return [int(math.floor(ratio * g.size + 1e-9)) for g in self.groups]

    def safe_ratio(self) -> float:
        """The largest ratio that empties no group (3 decimals, rounded down)."""
        if not self.groups:
            return 0.0
        if self.global_rank:
            k_max = int(self._last.min())
            return math.floor(k_max / self.total * 1000) / 1000
        return math.floor(min((g.size - 1) / g.size for g in self.groups) * 1000) / 1000

    def max_ratio(self) -> float:
        return 0.999 if self.min_channels else self.safe_ratio()

    def counts(self, ratio: float) -> Counts:
        keep, emptied, held = {}, [], []
        for g, r in zip(self.groups, self.removed_counts(ratio), strict=True):
            k = g.size - r
            if k == 0:
                emptied.append(g.id)
            floor = min(self.min_channels, g.size)
            if k < floor:
                k = floor
                held.append(g.id)
            keep[g.id] = k
        if self.round_to > 1:
            keep = self._rounded(keep) if not self.global_rank else {
                g.id: _round_up(keep[g.id], g.size, self.round_to) for g in self.groups}
        return Counts(keep, emptied, held)

    def _rounded(self, exact: dict[int, int]) -> dict[int, int]:
        """Per-layer counts rounded to multiples of ``round_to`` so that their sum follows the exact counts'.

        Rounding every group up at once makes the kept total jump wherever many groups of one width cross
        the same multiple together (all of YOLOv5n's 16-channel groups go 16 -> 8 at one ratio), and a
        FLOPs target then lands far from where it was asked. So every group is rounded down, and the
        channels that lost are given back a multiple at a time, largest remainder first (ties: the group
        whose next channel scores highest, relative to its group's best), until the total is the exact
        one's, to the nearest multiple.
        """
        r = self.round_to
        keep = {g.id: max(min(r, g.size), exact[g.id] // r * r) for g in self.groups}
        owed = sum(exact.values()) - sum(keep.values())
        order = sorted((g for g in self.groups if keep[g.id] < g.size),
                       key=lambda g: (-(exact[g.id] - keep[g.id]), -self._next_score(g, keep[g.id]), g.id))
        for g in order:
            if owed * 2 < r:
                break
            keep[g.id] = min(g.size, keep[g.id] + r)
            owed -= r
        return keep

    def _next_score(self, g: Group, k: int) -> float:
        """The score of the strongest channel a group of ``k`` kept channels leaves out, over its best."""
        if g.id not in self._relative:  # sorted once per group: a target's bisection asks again and again
            s = torch.sort(self.scores[g.id].float(), descending=True).values
            self._relative[g.id] = (s / s[0].clamp(min=1e-12)).tolist()
        return self._relative[g.id][k] if k < g.size else 0.0

    def plan(self, graph: ChannelGraph, ratio: float) -> ChannelPlan:
        """The channel plan for ``ratio``; refuses (UserError) a ratio that would empty a group."""
        if not 0.0 <= ratio < 1.0:
            raise UserError(f"--ratio must be in [0, 1), got {ratio}")
        c = self.counts(ratio)
        if c.emptied and not self.min_channels:
            names = ", ".join(graph.groups[g].name for g in c.emptied[:4])
            more = f" and {len(c.emptied) - 4} more" if len(c.emptied) > 4 else ""
            safe = self.safe_ratio()
            raise UserError(
                f"ratio {ratio} would remove every channel of {len(c.emptied)} group(s) ({names}{more}); "
                f"the largest safe ratio is {safe}: use --ratio {safe} or lower, or "
                "--min-channels N to keep the N strongest channels of such groups")
        keep = {}
        for g in self.groups:
            k = c.keep[g.id]
            if k < g.size:
                keep[g.id] = torch.topk(self.scores[g.id].float(), k, sorted=False).indices.sort().values
        held = [graph.groups[g].name for g in c.held]
        if held:
            logger.info(f"--min-channels {self.min_channels} held {len(held)} group(s): {', '.join(held)}")
        return ChannelPlan(graph=graph, keep=keep, held=held, ratio=ratio)


class CostModel:
    """Parameters and FLOPs (conv + BN, as ``total_gflops`` counts) of a pruned model, without building it.

    One forward at a small size records every conv's and batch norm's output area; FLOPs scale with
    the area, so fractions of the original are exact for any image size that is a multiple of the
    largest stride.
    """

    def __init__(self, model: nn.Module, graph: ChannelGraph, imgsz: int = 64) -> None:
        model = unwrap(model)
        self.graph = graph
        self.modules = {n: model.get_submodule(n) for n in graph.calls}
        self.area: dict[str, int] = {}
        probe(model, imgsz, {n: self._hook(n) for n in self.modules})
        self.other_params = count_params(model) - sum(count_params(m) for m in self.modules.values())
        self.base_params, self.base_flops = self.cost({})

    def _hook(self, name: str):
        def fn(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            self.area[name] = self.area.get(name, 0) + out.shape[-1] * out.shape[-2]
        return fn

    def cost(self, keep: dict[int, int], skip: frozenset[str] | set[str] = frozenset()) -> tuple[int, int]:
        """(params, FLOPs) with ``keep[group id]`` channels per group, leaving out the modules in ``skip``."""
        params, flops = self.other_params, 0
        for name in self.graph.calls:
            if name in skip:
                continue
            p, f = self.call_cost(name, keep)
            params += p
            flops += f
        return params, flops

    def call_cost(self, name: str, keep: dict[int, int]) -> tuple[int, int]:
        """(params, FLOPs) of one conv or batch norm with ``keep[group id]`` channels per group."""
        call, m = self.graph.calls[name], self.modules[name]
        area = self.area.get(name, 0)
        if call.kind == "bn":
            c = _width(call.outputs, keep, m.num_features)
            return 2 * c, 4 * area * c  # as models.profile counts a batch norm
        cout = _width(call.outputs, keep, m.out_channels)
        kk = m.kernel_size[0] * m.kernel_size[1]
        if call.kind == "depthwise":
            per_out = kk
        elif call.kind == "conv":
            per_out = _width(call.inputs, keep, m.in_channels) * kk
        else:
            per_out = m.in_channels // m.groups * kk
        return cout * per_out + (cout if m.bias is not None else 0), 2 * area * cout * per_out

    def fraction(self, keep: dict[int, int], what: str, skip: frozenset[str] | set[str] = frozenset(),
                 ) -> float:
        """``what`` (``flops`` or ``params``) of the pruned model as a fraction of the original."""
        params, flops = self.cost(keep, skip)
        return flops / self.base_flops if what == "flops" else params / self.base_params


def _round_up(k: int, size: int, multiple: int) -> int:
    """``k`` rounded up to a multiple (at least one multiple, at most ``size``)."""
    return min(size, max(multiple, -(-k // multiple) * multiple))


def _width(layout: list[tuple[int, int]] | None, keep: dict[int, int], default: int) -> int:
    if layout is None:
        return default
    return sum(keep.get(g, n) for g, n in layout)


def score_groups(model: nn.Module, groups: list[Group], importance: Importance) -> dict[int, torch.Tensor]:
    """Scores of every group the importance can judge."""
    model = unwrap(model)
    scores = {}
    skipped = []
    for g in groups:
        s = importance(model, g)
        if s is None:
            skipped.append(g.name)
        else:
            scores[g.id] = s
    if skipped:
        logger.info(f"{type(importance).__name__} cannot score {len(skipped)} group(s), left whole: "
                    f"{', '.join(skipped[:5])}")
    return scores


def find_ratio(alloc: Allocator, cost: CostModel, what: str, target: float) -> float:
    """Bisect the ratio so that the pruned model's ``what`` (flops|params) is ``target`` of the original."""
    if not 0.0 < target <= 1.0:
        raise UserError(f"--target-{what} must be a fraction in (0, 1], got {target}")
    hi = alloc.max_ratio()
    reach = cost.fraction(alloc.counts(hi).keep, what)
    if target < reach * (1 - TARGET_TOLERANCE):
        how = "" if alloc.min_channels else " without emptying a group"
        raise UserError(f"--target-{what} {target}: the smallest reachable fraction{how} is {reach:.3f} "
                        f"(at ratio {hi}); widen --include, or lower --min-channels / --round-to")
    lo, best, best_err = 0.0, 0.0, float("inf")
    for _ in range(40):
        mid = (lo + hi) / 2
        frac = cost.fraction(alloc.counts(mid).keep, what)
        err = abs(frac - target) / target
        if err < best_err:
            best, best_err = mid, err
        if err < 0.002:
            break
        if frac > target:
            lo = mid
        else:
            hi = mid
    if best_err > TARGET_TOLERANCE:
        got = cost.fraction(alloc.counts(best).keep, what)
        logger.warning(f"--target-{what} {target}: the nearest plan reaches {got:.3f} "
                       "(channel counts are discrete; try a smaller --round-to)")
    return best  # not rounded: a rounded ratio may cross a step of the discrete counts


def largest_ratio(model: nn.Module, graph: ChannelGraph, importance: Importance, *, global_rank: bool,
                  include: list[str] | None = None, round_to: int = ROUND_TO, min_channels: int = 0) -> float:
    """The largest ratio a plan of these options takes (the largest safe one; 0.999 with ``min_channels``)."""
    groups = graph.select(include)
    return Allocator(groups, score_groups(model, groups, importance), global_rank, round_to, min_channels).max_ratio()


def plan_channels(model: nn.Module, graph: ChannelGraph, importance: Importance, *,
                  ratio: float | None = None, target_flops: float | None = None,
                  target_params: float | None = None, global_rank: bool = True,
                  include: list[str] | None = None, round_to: int = ROUND_TO, min_channels: int = 0,
                  cost: CostModel | None = None) -> ChannelPlan:
    """Score, allocate and select: the channel plan for a ratio or a FLOPs / params target.

    Args:
        model: the model ``graph`` was traced from.
        graph: its channel graph.
        importance: e.g. :class:`~yoloslim.prune.importance.BNScale`.
        ratio: fraction of the selected groups' channels to remove.
        target_flops: instead of ``ratio``, the FLOPs of the pruned model as a fraction of the original.
        target_params: likewise for parameters.
        global_rank: one ranking over all channels (slim) or the same ratio in every group (l1/l2).
        include: module-name prefixes; only groups with a producer under them are pruned.
        round_to: kept widths are multiples of this.
        min_channels: keep at least this many channels per group instead of refusing.
        cost: a prepared :class:`CostModel` (built when a target needs one).
    """
    if sum(x is not None for x in (ratio, target_flops, target_params)) != 1:
        raise UserError("give exactly one of --ratio, --target-flops, --target-params")
    groups = graph.select(include)
    alloc = Allocator(groups, score_groups(model, groups, importance), global_rank, round_to, min_channels)
    if ratio is None:
        what, target = ("flops", target_flops) if target_flops is not None else ("params", target_params)
        cost = cost or CostModel(model, graph)
        ratio = find_ratio(alloc, cost, what, target)
    return alloc.plan(graph, ratio)
