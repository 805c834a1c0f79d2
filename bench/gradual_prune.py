"""Prune gradually during the fine-tune instead of cutting first (a probe, run by hand).

The cut is planned on the unpruned model exactly as ``yoloslim prune`` plans it (and checked against a
pruned model file made with the same options); then the unpruned model trains with ``yoloslim train``
while the γ and β of the channels the cut removes shrink to 0 along the cubic ramp of gradual magnitude
pruning (Zhu & Gupta 2017, arXiv:1710.01878: from 10 % to 75 % of the optimizer steps), and are held at
0 afterwards, in the model and in its EMA. With γ = β = 0 and an activation with act(0) = 0 the removed
channels emit exactly 0, so ``compact`` cuts them out of the last weights without changing what the
model computes (checked on a random batch). Session 14 tried it on YOLOX-s (docs/BENCHMARKS.md)::

    python bench/gradual_prune.py train --weights W/models/baseline.safetensors --target-flops 0.27 \\
        --allocation sensitivity --sensitivity W/sensitivity-auto.json \\
        --check W/models/auto-sensitivity-f27.safetensors -- \\
        --data W/data/data.yaml --epochs 100 --batch 8 --nominal-batch 8 --imgsz 192 --optimizer AdamW \\
        --hyp hyp-lr25.yaml --cache --out W/runs/gradual100
    python bench/gradual_prune.py compact --weights W/models/baseline.safetensors --target-flops 0.27 \\
        --allocation sensitivity --sensitivity W/sensitivity-auto.json --trained W/runs/gradual100 \\
        --out gradual100.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_hook import LoopEMA, train_with_ema  # noqa: E402

from yoloslim.errors import UserError
from yoloslim.models.io import ModelInfo, load_model, save_model, unwrap
from yoloslim.prune.pipeline import PruneOptions, prune_model
from yoloslim.prune.surgery import ChannelPlan, apply_plan, removed_rows

RAMP = (0.1, 0.75)  # fractions of the run's optimizer steps where the shrink starts and reaches 0


def plan_cut(args: argparse.Namespace) -> ChannelPlan:
    """The plan ``yoloslim prune`` makes with these options on ``--weights``."""
    model, _ = load_model(args.weights)
    res = prune_model(model, PruneOptions(method=args.method, target_flops=args.target_flops,
                                          allocation=args.allocation, sensitivity=args.sensitivity))
    if args.check:
        ref, _ = load_model(args.check)
        if res.model.spec.channels != ref.spec.channels:
            sys.exit(f"the plan does not give the widths of {args.check}: other prune options?")
    return res.plan


def removed_channels(plan: ChannelPlan) -> dict[str, torch.Tensor]:
    """Batch norm name -> bool mask of the channels the plan removes (every removed row must sit in one)."""
    rows = removed_rows(plan)
    for name in rows:
        if plan.graph.calls[name].kind != "bn":
            sys.exit(f"{name} loses channels but has no batch norm after it: not supported here")
    return rows


def scale_left(step: int, total: int) -> float:
    """What is left of the removed channels' γ and β after ``step`` of ``total`` optimizer steps (1 -> 0, cubic)."""
    start, end = (round(f * total) for f in RAMP)
    x = min(max((step - start) / max(end - start, 1), 0.0), 1.0)
    return (1 - x) ** 3


def train(args: argparse.Namespace, train_argv: list[str]) -> int:
    drops = removed_channels(plan_cut(args))
    epochs = int(train_argv[train_argv.index("--epochs") + 1])

    class Shrinking(LoopEMA):
        """The loop's EMA; each update first shrinks the removed channels of the model being trained."""

        def __init__(self, model: nn.Module, per_epoch: int, horizon_epochs: float) -> None:
            super().__init__(model, per_epoch, horizon_epochs)
            self.total = self.per_epoch * epochs

        @torch.no_grad()
        def update(self, model: nn.Module) -> None:
            step = self.updates + 1
            before, now = scale_left(step - 1, self.total), scale_left(step, self.total)
            factor = now / before if before > 0 else 0.0
            net = unwrap(model)
            for name, drop in drops.items():
                bn = net.get_submodule(name)
                bn.weight[drop] *= factor
                bn.bias[drop] *= factor
            super().update(model)
            if now == 0.0:  # held at 0 in the saved (EMA) weights too
                for name, drop in drops.items():
                    bn = self.ema.get_submodule(name)
                    bn.weight[drop] = 0.0
                    bn.bias[drop] = 0.0

    return train_with_ema(Shrinking, ["train", "--weights", args.weights, *train_argv])


def compact(args: argparse.Namespace) -> int:
    plan = plan_cut(args)
    model, info = load_model(Path(args.trained) / "weights" / "last.safetensors")
    model.eval()
    drops = removed_channels(plan)
    left = max(float(model.get_submodule(n).weight.detach()[d].abs().max()) for n, d in drops.items())
    small = apply_plan(model, plan).eval()
    x = torch.rand(2, 3, info.imgsz or 192, info.imgsz or 192, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(x), small(x)
    a, b = (a[0], b[0]) if isinstance(a, (tuple, list)) else (a, b)
    print(f"removed channels: max |γ| {left:.1e}; full (masked) against compact: max difference "
          f"{float((a - b).abs().max()):.1e}")
    small_info = ModelInfo(small.spec, info.names, info.imgsz, info.history)
    save_model(args.out, small, small_info.with_event("pruned", method=f"gradual {args.method}",
                                                      target_flops=args.target_flops, allocation=args.allocation))
    print(f"compact model: {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=("train", "compact"))
    p.add_argument("--weights", required=True, help="the unpruned model")
    p.add_argument("--method", default="auto")
    p.add_argument("--target-flops", type=float, required=True)
    p.add_argument("--allocation", default=None)
    p.add_argument("--sensitivity", default=None)
    p.add_argument("--check", default=None, help="a model `yoloslim prune` cut with the same options")
    p.add_argument("--trained", help="compact: the run folder of the train stage")
    p.add_argument("--out", help="compact: the compact model file to write")
    args = p.parse_args(argv[:cut])
    if args.stage == "train":
        return train(args, argv[cut + 1:])
    if not (args.trained and args.out):
        p.error("compact needs --trained RUN and --out FILE")
    return compact(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:  # a missing or unreadable model file, bad prune options: one line
        sys.exit(f"error: {e}")
