"""Iterative pruning: K smaller steps instead of one, optionally fine-tuning between them.

Each step re-scores the model it starts from (after fine-tuning, importance reflects the new
network). A ``ratio`` r is split so that every step removes ``1 - (1 - r)^(1/K)`` of the channels
left (K steps compound to r); a FLOPs / params target F is approached as ``F^(k/K)`` of the original
after step k, so the last step lands on F itself; ``layer`` spreads its blocks over the steps.
The fine-tuning is passed in as a function so that this module does not depend on the trainer; so is
the batch-norm recalibration that follows every step but the last (the caller recalibrates the final
model itself, to report its mAP before and after).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yoloslim.errors import UserError
from yoloslim.log import logger
from yoloslim.models.io import ModelInfo, load_model, save_model
from yoloslim.models.profile import count_params, profile, total_gflops
from yoloslim.prune.graph import ChannelGraph, Group, is_under
from yoloslim.prune.layers import find_blocks
from yoloslim.prune.pipeline import PruneOptions, PruneResult, prune_model

# fn(step model file, run folder) -> (fine-tuned model file, final metrics)
Finetune = Callable[[Path, Path], tuple[Path, dict[str, Any]]]
# fn(step model) -> images used: re-estimates its batch norms in place
Recalibrate = Callable[[nn.Module], int]


@dataclass
class StepRecord:
    """What one step did."""

    step: int
    amount: str  # the step's own flag, e.g. "--ratio 0.293"
    ratio: float
    file: str
    fraction: float  # FLOPs (params with a params target) of the original, after this step
    finetuned: str | None = None
    calib_images: int = 0  # images its batch norms were recalibrated on (0: not recalibrated)
    metrics: dict[str, Any] = field(default_factory=dict)


def prune_in_steps(model: nn.Module, info: ModelInfo, opts: PruneOptions, steps: int, step_dir: Path,
                   source: str = "", finetune: Finetune | None = None,
                   recalibrate: Recalibrate | None = None,
                   batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                   ) -> tuple[PruneResult, ModelInfo, list[StepRecord]]:
    """Prune ``model`` in ``steps`` steps; every step's model is written to ``step_dir``.

    Args:
        model: the model to prune (unchanged).
        info: its model-file metadata (names, image size, history).
        opts: the overall amount, as for one step.
        steps: number of steps K (at least 2).
        step_dir: folder for ``step{k}.safetensors`` and the fine-tuning runs ``finetune{k}``.
        source: the original model file, recorded in the history.
        finetune: fine-tunes a step's model file between steps (not after the last).
        recalibrate: re-estimates a step's batch norms right after its cut, before it is saved,
            fine-tuned and re-scored (not after the last step).
        batches: training ``(imgs, targets)`` for gradient-based methods (re-scored on each step's model).

    Returns:
        The last step's result (``model`` is the final compact model, ``renamed`` and
        ``removed_blocks`` relative to the original), its metadata, and one record per step.
    """
    opts.check()
    opts = opts.resolve()
    if steps < 2:
        raise UserError(f"iterative pruning needs at least 2 steps, got {steps}")
    measure = _measure(opts)
    original = measure(model)
    total_blocks = _layer_total(model, opts) if opts.method == "layer" else 0
    names = {n: n for n, _ in model.named_modules() if n}  # original name -> current name
    current, current_info = model, info
    records: list[StepRecord] = []
    result: PruneResult | None = None
    for k in range(1, steps + 1):
        step = _step_options(opts, k, steps, total_blocks, original, measure(current))
        logger.info(f"pruning step {k}/{steps}: {_amount(step)}")
        result = prune_model(current, step, batches=batches)
        calibrated = recalibrate(result.model) if recalibrate is not None and k < steps else 0
        names = {o: (result.renamed.get(n, n) if n is not None else None) for o, n in names.items()}
        current_info = ModelInfo(result.model.spec, info.names, info.imgsz, current_info.history).with_event(
            "pruned", method=opts.method, ratio=round(result.ratio, 6), step=f"{k}/{steps}", source=source,
            **({"calib_images": calibrated} if calibrated else {}))
        step_file = save_model(Path(step_dir) / f"step{k}.safetensors", result.model, current_info)
        current = result.model
        rec = StepRecord(k, _amount(step), round(result.ratio, 6), str(step_file),
                         round(measure(current) / original, 4), calib_images=calibrated)
        if finetune is not None and k < steps:
            best, metrics = finetune(step_file, Path(step_dir) / f"finetune{k}")
            current, current_info = load_model(best)
            rec.finetuned, rec.metrics = str(best), metrics
        records.append(rec)
    assert result is not None
    removed = _removed_blocks(model, names) if opts.method == "layer" else []
    ratio = _overall_ratio(opts, total_blocks, model, current)
    final = dataclasses.replace(result, model=current, renamed={o: n for o, n in names.items() if o != n},
                                removed_blocks=removed, ratio=ratio)
    return final, current_info, records


def _measure(opts: PruneOptions) -> Callable[[nn.Module], float]:
    if opts.target_params is not None:
        return lambda m: float(count_params(m))
    return lambda m: total_gflops(profile(m, 2 * max(m.spec.strides)))


def _step_options(opts: PruneOptions, k: int, steps: int, total_blocks: int, original: float,
                  current: float) -> PruneOptions:
    step = dataclasses.replace(opts, include=list(opts.include))
    if opts.method == "layer":
        step.ratio, step.blocks = None, total_blocks * k // steps - total_blocks * (k - 1) // steps
    elif opts.ratio is not None:
        step.ratio = 1 - (1 - opts.ratio) ** (1 / steps)
    else:
        target = opts.target_flops if opts.target_flops is not None else opts.target_params
        frac = min(1.0, target ** (k / steps) * original / current)
        if opts.target_flops is not None:
            step.target_flops = frac
        else:
            step.target_params = frac
    return step


def _layer_blocks(model: nn.Module, opts: PruneOptions) -> list[str]:
    blocks = [b.name for b in find_blocks(model, ChannelGraph.trace(model))]
    if opts.include:
        blocks = [b for b in blocks if any(is_under(b, p) or is_under(p, b) for p in opts.include)]
    return blocks


def _layer_total(model: nn.Module, opts: PruneOptions) -> int:
    """How many blocks ``layer`` removes over all steps."""
    if opts.blocks is not None:
        return opts.blocks
    if opts.ratio is not None:
        return int(round(opts.ratio * len(_layer_blocks(model, opts))))
    raise UserError("--steps with --method layer takes --ratio or --blocks")


def _overall_ratio(opts: PruneOptions, total_blocks: int, model: nn.Module, final: nn.Module) -> float:
    """Fraction of the selected blocks / prunable channels that the steps removed together."""
    if opts.method == "layer":
        return total_blocks / max(1, len(_layer_blocks(model, opts)))
    graph = ChannelGraph.trace(model)
    groups = graph.select(list(opts.include) or None)
    before = sum(g.size for g in groups)
    # a group's width now: its first producer's output, or the same piece of it when a split cuts that
    # output into several groups (YOLOv8's C2f)
    final_graph = ChannelGraph.trace(final)
    after = sum(_piece(final_graph, g.producers[0], _piece_index(graph, g)).size for g in groups)
    return 1 - after / max(1, before)


def _piece_index(graph: ChannelGraph, group: Group) -> int:
    """Which piece of its first producer's output ``group`` is (0 unless that output is split)."""
    p = group.producers[0]
    return sorted(h.rows(p).start for h in graph.groups if p in h.producers).index(group.rows(p).start)


def _piece(graph: ChannelGraph, producer: str, index: int) -> Group:
    return sorted((h for h in graph.groups if producer in h.producers), key=lambda h: h.rows(producer).start)[index]


def _removed_blocks(model: nn.Module, names: dict[str, str | None]) -> list[str]:
    """Blocks ``D.m.i`` of the original model whose modules are gone."""
    out = []
    for stage, depth in model.spec.depths.items():
        for i in range(depth):
            block = f"{stage}.m.{i}"
            if names.get(block, block) is None:
                out.append(block)
    return out


def _amount(o: PruneOptions) -> str:
    for key in ("ratio", "blocks", "target_flops", "target_params"):
        v = getattr(o, key)
        if v is not None:
            return f"--{key.replace('_', '-')} {v:.4g}"
    return ""
