"""One call from a model to its pruned model: trace, score, allocate, cut (the library entry point).

``prune_model(model, PruneOptions(method="slim", ratio=0.5))`` returns the compact model and the
plan; the ``prune`` workflow, the demo and the benchmarks all go through it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from yoloslim.errors import UserError
from yoloslim.log import logger
from yoloslim.models.io import unwrap
from yoloslim.prune.allocate import ALLOCATIONS, ROUND_TO, largest_ratio, plan_channels, score_groups
from yoloslim.prune.gradients import accumulate_gradients
from yoloslim.prune.graph import ChannelGraph
from yoloslim.prune.importance import importance_for
from yoloslim.prune.latency_target import LatencyFit, LatencyTarget, prune_to_latency
from yoloslim.prune.layers import LayerPlan, apply_layer_plan, block_renames, plan_layers, rename_key
from yoloslim.prune.sensitivity import SensitivityCurves, plan_by_sensitivity
from yoloslim.prune.surgery import ChannelPlan, apply_plan, fold_bias

METHODS = ("auto", "slim", "l1", "l2", "group", "taylor", "layer")
NEEDS_GRADIENTS = ("taylor",)


def auto_method() -> tuple[str, bool]:
    """What ``--method auto`` (the default) runs, as ``(method, global ranking)``: DepGraph's group norm,
    per layer.

    Chosen on what survives BN recalibration and fine-tuning (docs/BENCHMARKS.md, "Pruning criteria"):
    on the demo's trained YOLOv5n cut to 40 % of its FLOPs and recalibrated, the group norm kept mAP@.5
    0.115 against 0.034 for first-order Taylor ranked globally (the former choice with ``--data``, best
    right after the cut on a weak model without recalibration) and 0.050 for Taylor per layer; after the
    same 8 distilled epochs, 0.301 mAP@.5:.95 against 0.275. It needs no data and no gradients.
    """
    return "group", False


@dataclass
class PruneOptions:
    """What to prune and how much (the ``yoloslim prune`` flags).

    Attributes:
        method: ``slim`` (global BN-γ threshold), ``l1`` / ``l2`` (filter norms), ``group`` (DepGraph's
            group L2 norm), ``taylor`` (first-order Taylor, needs gradients), ``layer`` (residual blocks),
            ``auto`` (:func:`auto_method`).
        ratio: fraction of the prunable channels (or removable blocks) to remove.
        target_flops: instead, FLOPs of the result as a fraction of the original.
        target_params: instead, parameters of the result as a fraction of the original.
        blocks: for ``layer``, the number of blocks to remove.
        global_rank: one ranking over all channels; None = the method's default (slim: global,
            l1/l2: per layer).
        include: module-name prefixes limiting what is pruned (plus what is coupled to them).
        round_to: pruned widths are multiples of this (None: :data:`~yoloslim.prune.allocate.ROUND_TO`,
            the widths that run fast; 1: exact counts).
        min_channels: keep at least this many channels per group instead of refusing a ratio that empties one.
        fold_bias: fold removed channels' constant act(β) into the next convs' biases.
        allocation: one of :data:`~yoloslim.prune.allocate.ALLOCATIONS` (None: the method's default);
            ``global`` is ``global_rank=True``, ``uniform`` is ``global_rank=False``.
        sensitivity: for ``allocation="sensitivity"``, the JSON file ``yoloslim sensitivity`` wrote.
        target_latency: instead of an amount, the batch-1 latency to reach, measured on this machine
            (channel methods; :mod:`yoloslim.prune.latency_target`).
    """

    method: str = "auto"
    ratio: float | None = None
    target_flops: float | None = None
    target_params: float | None = None
    blocks: int | None = None
    global_rank: bool | None = None
    include: list[str] = field(default_factory=list)
    round_to: int | None = None
    min_channels: int = 0
    fold_bias: bool = False
    allocation: str | None = None
    sensitivity: str | None = None
    target_latency: LatencyTarget | None = None

    def __post_init__(self) -> None:
        if self.global_rank is None and self.allocation in ("uniform", "global"):
            self.global_rank = self.allocation == "global"

    def resolve(self) -> PruneOptions:
        """These options with ``auto`` replaced by :func:`auto_method`'s choice (an explicit ``--global`` stays)."""
        if self.method != "auto":
            return self
        method, global_rank = auto_method()
        if self.global_rank is not None or self.allocation == "sensitivity":
            global_rank = self.global_rank
        return dataclasses.replace(self, method=method, global_rank=global_rank)

    @property
    def rounding(self) -> int:
        """The multiple pruned widths keep: ``round_to``, or the default :data:`~yoloslim.prune.allocate.ROUND_TO`."""
        return ROUND_TO if self.round_to is None else self.round_to

    def check(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        amounts = {"--ratio": self.ratio, "--target-flops": self.target_flops,
                   "--target-params": self.target_params, "--target-latency": self.target_latency,
                   "--blocks": self.blocks}
        given = [k for k, v in amounts.items() if v is not None]
        if len(given) != 1:
            got = f" (got {', '.join(given)})" if given else ""
            raise UserError("give exactly one of " + ", ".join(amounts) + got)
        if self.blocks is not None and self.method != "layer":
            raise UserError("--blocks is for --method layer; channel methods take --ratio or a target")
        if self.allocation is not None and self.allocation not in ALLOCATIONS:
            raise UserError(f"--allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        if self.global_rank and self.allocation not in (None, "global"):
            raise UserError(f"--global is --allocation global; it contradicts --allocation {self.allocation}")
        if (self.allocation == "sensitivity") != bool(self.sensitivity):
            raise UserError("--allocation sensitivity needs --sensitivity FILE.json (written by `yoloslim "
                            "sensitivity --json`), and --sensitivity is only read by --allocation sensitivity")
        channel_only = (self.global_rank or self.allocation or self.round_to is not None or self.min_channels
                        or self.fold_bias)
        if self.method == "layer" and channel_only:
            raise UserError("--global, --allocation, --round-to, --min-channels and --fold-bias are for channel "
                            "methods, not --method layer")


@dataclass
class PruneResult:
    """The compact model and what was done to get it."""

    model: nn.Module
    plan: ChannelPlan | LayerPlan
    ratio: float
    held: list[str] = field(default_factory=list)
    unfolded: list[str] = field(default_factory=list)  # consumers --fold-bias could not adjust
    renamed: dict[str, str | None] = field(default_factory=dict)  # old module name -> new (None: removed)
    removed_blocks: list[str] = field(default_factory=list)  # layer pruning, by their names before
    latency: LatencyFit | None = None  # --target-latency: what the search measured


def prune_model(model: nn.Module, opts: PruneOptions, graph: ChannelGraph | None = None,
                batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> PruneResult:
    """Prune ``model`` (unchanged but for the gradients ``taylor`` computes and clears) into a new compact model.

    Args:
        model: a yoloslim detector (``model.spec`` is rebuilt with the new widths / depths).
        opts: method and amount.
        graph: the model's channel graph, when already traced.
        batches: ``(imgs, targets)`` of the training data, for the methods in :data:`NEEDS_GRADIENTS`.
    """
    opts.check()
    opts = opts.resolve()
    model = unwrap(model)
    graph = graph or ChannelGraph.trace(model)
    if opts.target_latency is not None:
        return _prune_to_latency(model, opts, graph, batches)
    include = list(opts.include) or None
    method = opts.method
    if method == "layer":
        plan = plan_layers(model, graph, ratio=opts.ratio, blocks=opts.blocks, target_flops=opts.target_flops,
                           target_params=opts.target_params, include=include)
        names = ", ".join(b.name for b in plan.blocks) or "-"
        logger.info(f"layer pruning removes {plan.count} block(s): {names}")
        renames = block_renames(model.spec, plan)
        renamed = {n: rename_key(n, renames) for n, _ in model.named_modules() if n}
        return PruneResult(apply_layer_plan(model, plan), plan, plan.ratio, renamed={
            k: v for k, v in renamed.items() if k != v}, removed_blocks=[b.name for b in plan.blocks])
    global_rank = method == "slim" if opts.global_rank is None else opts.global_rank
    if method in NEEDS_GRADIENTS:
        if not batches:
            raise UserError(f"--method {method} needs --data: its scores come from the loss gradients on a few "
                            "batches of the train split")
        accumulate_gradients(model, batches, imgsz=int(batches[0][0].shape[-1]))
    try:
        if opts.allocation == "sensitivity":
            groups = graph.select(include)
            scores = score_groups(model, groups, importance_for(method, False))
            plan = plan_by_sensitivity(model, graph, scores, SensitivityCurves.load(opts.sensitivity), groups,
                                       ratio=opts.ratio, target_flops=opts.target_flops,
                                       target_params=opts.target_params, round_to=opts.rounding)
        else:
            plan = plan_channels(model, graph, importance_for(method, global_rank), ratio=opts.ratio,
                                 target_flops=opts.target_flops, target_params=opts.target_params,
                                 global_rank=global_rank, include=include,
                                 round_to=opts.rounding, min_channels=opts.min_channels)
    finally:
        if method in NEEDS_GRADIENTS:
            model.zero_grad(set_to_none=True)
    compact = apply_plan(model, plan)
    unfolded = fold_bias(model, compact, plan) if opts.fold_bias else []
    if unfolded:
        logger.warning(f"--fold-bias: {len(unfolded)} conv(s) have neither a bias nor a batch norm to take "
                       f"the removed channels' constant: {', '.join(unfolded[:5])}")
    return PruneResult(compact, plan, plan.ratio, held=plan.held, unfolded=unfolded)



def _prune_to_latency(model: nn.Module, opts: PruneOptions, graph: ChannelGraph,
                      batches: list[tuple[torch.Tensor, torch.Tensor]] | None) -> PruneResult:
    """``opts.target_latency``: search the ratio whose pruned model runs in the target time here
    (:mod:`yoloslim.prune.latency_target`); the result carries the :class:`LatencyFit`."""
    if opts.method == "layer" or opts.allocation == "sensitivity":
        raise UserError("--target-latency searches a channel plan's ratio: use a channel method with "
                        "the uniform or global allocation (not --method layer or --allocation sensitivity)")
    global_rank = opts.method == "slim" if opts.global_rank is None else opts.global_rank
    if opts.method in NEEDS_GRADIENTS:
        if not batches:
            raise UserError(f"--method {opts.method} needs --data: its scores come from the loss gradients on a few "
                            "batches of the train split")
        accumulate_gradients(model, batches, imgsz=int(batches[0][0].shape[-1]))
    try:
        floor = 1 - largest_ratio(model, graph, importance_for(opts.method, global_rank), global_rank=global_rank,
                                  include=list(opts.include) or None, round_to=opts.rounding,
                                  min_channels=opts.min_channels)
    finally:
        if opts.method in NEEDS_GRADIENTS:
            model.zero_grad(set_to_none=True)
    channel = dataclasses.replace(opts, target_latency=None)

    def prune(keep: float) -> PruneResult:
        return prune_model(model, dataclasses.replace(channel, ratio=round(1 - keep, 6)), graph, batches)

    result, fit = prune_to_latency(model, opts.target_latency, prune, floor)
    result.latency = fit
    return result
