"""Sensitivity curves and the allocation that follows them (``prune --allocation sensitivity``).

``yoloslim sensitivity`` prunes each prunable group alone at a few ratios and records how much the
model lost (Li et al. 2017, "Pruning Filters for Efficient ConvNets", arXiv:1608.08710, §4.1);
:class:`SensitivityCurves` is that measurement, read from and written to JSON. :func:`allocate`
then cuts greedily: it repeatedly takes the step, over all groups, with the lowest predicted loss
(the curves, interpolated linearly, made non-decreasing) per FLOP (or parameter, or channel) saved,
until the target is met. Which channels go inside a group is still the importance's choice; the
curves only decide how many.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yoloslim.errors import UserError
from yoloslim.log import logger
from yoloslim.prune.allocate import ROUND_TO, TARGET_TOLERANCE, CostModel
from yoloslim.prune.graph import ChannelGraph, Group
from yoloslim.prune.surgery import ChannelPlan

METRICS = ("map", "output")  # mAP@.5:.95 on val images; the proxy: relative output distance to the unpruned model
STEPS_PER_GROUP = 20  # the greedy cuts a group in steps of at least 1/20 of its channels


@dataclass
class GroupCurve:
    """One group's measurement.

    Attributes:
        name: the group's name (its first producer conv).
        size: its channels.
        producers: every conv whose output channels are in the group (more than one: coupled channels,
            pruned together by a residual add or a concat).
        scores: the metric after pruning the group alone at each ratio (and recalibrating).
        loss: the predicted loss at each ratio: mAP lost (``map``) or the output distance (``output``).
    """

    name: str
    size: int
    producers: list[str]
    scores: list[float]
    loss: list[float]


@dataclass
class SensitivityCurves:
    """What ``yoloslim sensitivity`` measured (the JSON file it writes)."""

    weights: str
    method: str
    metric: str
    base: float  # the unpruned model's score (0 for ``output``)
    ratios: list[float]
    groups: list[GroupCurve] = field(default_factory=list)
    val_images: int = 0
    calib_images: int = 0
    evaluations: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, path: str | Path) -> SensitivityCurves:
        """Read a ``sensitivity --json`` file (a clear error when it is not one)."""
        try:
            d = json.loads(Path(path).read_text())
            groups = [GroupCurve(**g) for g in d.pop("groups")]
            curves = cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__}, groups=groups)
        except FileNotFoundError:
            raise UserError(f"--sensitivity {path}: no such file") from None
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"--sensitivity {path}: not a file written by `yoloslim sensitivity --json` ({e})"
                            ) from None
        if any(len(g.loss) != len(curves.ratios) for g in curves.groups):
            raise UserError(f"--sensitivity {path}: a group has not one loss per ratio")
        return curves

    def predictor(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(ratios, loss)`` of one group from ratio 0 (no loss), the loss made non-decreasing."""
        g = next(c for c in self.groups if c.name == name)
        loss = np.maximum.accumulate(np.maximum(np.asarray([0.0, *g.loss]), 0.0))
        return np.asarray([0.0, *self.ratios]), loss


def _check_model(curves: SensitivityCurves, groups: list[Group]) -> None:
    """Refuse curves measured on another model (a group missing or of another size)."""
    measured = {g.name: g.size for g in curves.groups}
    for g in groups:
        if g.name not in measured:
            raise UserError(f"--sensitivity: group {g.name} was not measured (was the file written for this "
                            "model, with the same --include?)")
        if measured[g.name] != g.size:
            raise UserError(f"--sensitivity: group {g.name} has {g.size} channels here but {measured[g.name]} "
                            "in the file: it was measured on another model")


def _next_keep(keep: int, size: int, round_to: int, max_removed: int) -> int | None:
    """The next smaller width of a group to try (a multiple of ``round_to``), or None when none is allowed."""
    step = max(1, math.ceil(size / STEPS_PER_GROUP))
    k = (keep - step) // round_to * round_to
    if k < max(1, round_to) or size - k > max_removed:
        return None
    return k


def allocate(curves: SensitivityCurves, cost: CostModel, groups: list[Group], *, what: str, target: float,
             round_to: int = ROUND_TO) -> dict[int, int]:
    """Kept channels per group: the least predicted loss that meets ``target``, cut greedily.

    Args:
        curves: the measurement.
        cost: the model's cost model.
        groups: the groups that may be cut (each must be in ``curves``).
        what: ``flops`` / ``params`` (``target`` = the result's fraction of the original) or ``channels``
            (``target`` = the fraction of the groups' channels to remove).
        target: see ``what``.
        round_to: kept widths are multiples of this.

    Returns:
        group id -> channels kept (every group of ``groups``).
    """
    _check_model(curves, groups)
    keep = {g.id: g.size for g in groups}
    total = sum(g.size for g in groups)
    pred = {g.id: curves.predictor(g.name) for g in groups}
    max_removed = {g.id: int(math.floor(pred[g.id][0][-1] * g.size + 1e-9)) for g in groups}
    touching: dict[int, list[str]] = {g.id: [] for g in groups}
    for name, call in cost.graph.calls.items():
        for layout in (call.inputs or [], call.outputs or []):
            for gid, _ in layout:
                if gid in touching and name not in touching[gid]:
                    touching[gid].append(name)
    sets = {gid: set(names) for gid, names in touching.items()}
    neighbours = {gid: {o for o in sets if sets[o] & sets[gid]} | {gid} for gid in sets}
    index = 0 if what == "params" else 1

    def loss(gid: int, k: int) -> float:
        g = cost.graph.groups[gid]
        r, lo = pred[gid]
        return float(np.interp((g.size - k) / g.size, r, lo))

    def saving(gid: int, k: int) -> float:
        if what == "channels":
            return float(keep[gid] - k)
        trial = {**keep, gid: k}
        return float(sum(cost.call_cost(n, keep)[index] - cost.call_cost(n, trial)[index] for n in touching[gid]))

    def reached() -> bool:
        if what == "channels":
            return total - sum(keep.values()) >= target * total - 1e-9
        return cost.fraction(keep, what) <= target

    def candidate(gid: int) -> tuple[float, float, int] | None:
        g = cost.graph.groups[gid]
        k = _next_keep(keep[gid], g.size, round_to, max_removed[gid])
        if k is None:
            return None
        s = saving(gid, k)
        if s <= 0:
            return None
        return (loss(gid, k) - loss(gid, keep[gid])) / s, -s, k

    best = {g.id: candidate(g.id) for g in groups}
    while not reached():
        options = [(c, gid) for gid, c in best.items() if c is not None]
        if not options:
            got = (1 - sum(keep.values()) / total) if what == "channels" else cost.fraction(keep, what)
            raise UserError(f"--allocation sensitivity cannot reach the target {target} by cutting no group beyond "
                            f"its largest measured ratio ({max(curves.ratios)}): it gets to {got:.3f}; measure "
                            "larger --ratios or lower the target")
        (_, _, k), gid = min(options)
        keep[gid] = k
        for o in neighbours[gid]:
            best[o] = candidate(o)
    if what != "channels":
        got = cost.fraction(keep, what)
        if abs(got - target) / target > TARGET_TOLERANCE:
            logger.warning(f"--target-{what} {target}: the sensitivity allocation reaches {got:.3f} "
                           "(its steps are discrete)")
    return keep


def plan_by_sensitivity(model: torch.nn.Module, graph: ChannelGraph, scores: dict[int, torch.Tensor],
                        curves: SensitivityCurves, groups: list[Group], *, ratio: float | None = None,
                        target_flops: float | None = None, target_params: float | None = None,
                        round_to: int = ROUND_TO, cost: CostModel | None = None) -> ChannelPlan:
    """The channel plan of the sensitivity allocation: counts from :func:`allocate`, channels by ``scores``.

    Args:
        model: the model ``graph`` was traced from.
        graph: its channel graph.
        scores: group id -> per-channel importance (higher = keep); groups without scores stay whole.
        curves: the measurement.
        groups: the groups that may be cut.
        ratio: the fraction of the groups' channels to remove; or one of the targets.
        target_flops: the result's FLOPs as a fraction of the original.
        target_params: likewise for parameters.
        round_to: kept widths are multiples of this.
        cost: a prepared cost model.
    """
    if sum(x is not None for x in (ratio, target_flops, target_params)) != 1:
        raise UserError("give exactly one of --ratio, --target-flops, --target-params")
    if ratio is not None and not 0.0 <= ratio < 1.0:
        raise UserError(f"--ratio must be in [0, 1), got {ratio}")
    groups = [g for g in groups if g.id in scores]
    what, target = (("channels", ratio) if ratio is not None else ("flops", target_flops)
                    if target_flops is not None else ("params", target_params))
    if what != "channels" and not 0.0 < target <= 1.0:
        raise UserError(f"--target-{what} must be a fraction in (0, 1], got {target}")
    counts = allocate(curves, cost or CostModel(model, graph), groups, what=what, target=target, round_to=round_to)
    keep = {gid: torch.topk(scores[gid].float(), k, sorted=False).indices.sort().values
            for gid, k in counts.items() if k < graph.groups[gid].size}
    total = sum(g.size for g in groups)
    removed = total - sum(counts.values())
    return ChannelPlan(graph=graph, keep=keep, held=[], ratio=removed / total if total else 0.0)
