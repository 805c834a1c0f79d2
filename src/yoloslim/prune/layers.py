"""Layer pruning: remove whole residual blocks (``y = x + branch(x)``) and shrink the stages' depths.

Removable blocks are found from the traced graph, not from YOLOv5 names: a block is the module
``D.m.{i}`` of a stage whose depth key ``D`` is in the spec (the naming convention every builder
follows), and it is removable when its output is ``input + branch`` and nothing else from outside
enters it. Removing it leaves ``x``, which is what the block computes once its branch is zero: the
masked model zeroes γ and β of the branch's last batch norm. Blocks are ranked by that batch norm's
mean |γ| (network slimming's scale, as the darknet layer-pruning projects rank shortcuts).

A stage that also concatenates every block's output (YOLOv8's C2f / C3k2) then reads one piece less:
its module's ``fold_removed_blocks(prefix, state, removed)`` folds the removed piece's input columns
of the conv after the concat into the piece it copied, so the compact model still equals the masked one.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from yoloslim.errors import UserError
from yoloslim.models import build_model
from yoloslim.models.io import load_state_strict, unwrap
from yoloslim.models.spec import ArchSpec
from yoloslim.prune.allocate import TARGET_TOLERANCE, CostModel
from yoloslim.prune.graph import PASSTHROUGH_MODULES, ChannelGraph, is_under

ADDS = {operator.add, operator.iadd, torch.add, "add", "add_"}


@dataclass
class Block:
    """A removable residual block.

    Attributes:
        stage: the stage's depth key in the spec (``model.4``).
        index: its position in the stage (``model.4.m.{index}``).
        branch: the module whose output is added to the input: the branch's last batch norm, or a
            conv when the branch ends without one.
    """

    stage: str
    index: int
    branch: str

    @property
    def name(self) -> str:
        return f"{self.stage}.m.{self.index}"


@dataclass
class LayerPlan:
    """Blocks to remove: stage -> sorted indices, and the blocks themselves."""

    removed: dict[str, list[int]] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)
    ratio: float = 0.0

    @property
    def count(self) -> int:
        return len(self.blocks)


def find_blocks(model: nn.Module, graph: ChannelGraph) -> list[Block]:
    """Every removable residual block of the model, in forward order."""
    model = unwrap(model)
    modules = dict(model.named_modules())
    nodes = list(graph.fx_graph.nodes)
    inside: dict[str, list[fx.Node]] = {}
    for n in nodes:
        for key in (n.meta.get("nn_module_stack") or {}):
            inside.setdefault(key, []).append(n)
    blocks = []
    for stage, depth in model.spec.depths.items():
        for i in range(depth):
            name = f"{stage}.m.{i}"
            if name not in modules or name not in inside:
                continue
            branch = _residual_branch(inside[name], modules)
            if branch is not None:
                blocks.append(Block(stage, i, branch))
    return blocks


def _residual_branch(members: list[fx.Node], modules: dict[str, nn.Module]) -> str | None:
    """The branch end of ``input + branch`` when ``members`` (a block's nodes) form a residual block."""
    own = set(members)
    exits = [n for n in members if any(u not in own for u in n.users)]
    if len(exits) != 1 or exits[0].target not in ADDS or len(exits[0].args) != 2:
        return None
    add = exits[0]
    outside = [a for a in add.args if isinstance(a, fx.Node) and a not in own]
    branch = [a for a in add.args if isinstance(a, fx.Node) and a in own]
    if len(outside) != 1 or len(branch) != 1:
        return None
    for n in members:  # nothing but the block's input may come from outside
        for a in n.all_input_nodes:
            if a not in own and a is not outside[0]:
                return None
    node = branch[0]
    while node.op == "call_module" and isinstance(modules[str(node.target)], PASSTHROUGH_MODULES):
        node = node.args[0]
    if node.op == "call_module" and isinstance(modules[str(node.target)], (nn.BatchNorm2d, nn.Conv2d)):
        return str(node.target)
    return None


@torch.no_grad()
def block_scores(model: nn.Module, blocks: list[Block]) -> list[float]:
    """Mean |γ| of each block's last batch norm (mean |w| of its conv when it has none)."""
    model = unwrap(model)
    return [float(model.get_submodule(b.branch).weight.detach().abs().mean()) for b in blocks]


def plan_layers(model: nn.Module, graph: ChannelGraph, *, ratio: float | None = None,
                blocks: int | None = None, target_flops: float | None = None,
                target_params: float | None = None,
                include: list[str] | None = None, cost: CostModel | None = None) -> LayerPlan:
    """Choose the weakest residual blocks to remove.

    Args:
        model: the model ``graph`` was traced from.
        graph: its channel graph.
        ratio: fraction of the removable blocks to remove.
        blocks: instead, the number of blocks to remove.
        target_flops / target_params: instead, the fraction of the original to land on.
        include: module-name prefixes; only blocks under (or containing) them are candidates.
        cost: a prepared :class:`CostModel` for the targets.
    """
    if sum(x is not None for x in (ratio, blocks, target_flops, target_params)) != 1:
        raise UserError("give exactly one of --ratio, --blocks, --target-flops, --target-params "
                        "for --method layer")
    model = unwrap(model)
    cands = find_blocks(model, graph)
    if include:
        cands = [b for b in cands if any(is_under(b.name, p) or is_under(p, b.name) for p in include)]
    if not cands:
        raise UserError("no removable residual block" + (f" under {' '.join(include)}" if include else "")
                        + " in this model; use a channel method (slim, l1, l2) instead")
    scores = block_scores(model, cands)
    order = sorted(range(len(cands)), key=lambda i: (scores[i], i))
    min_depth = int(model.spec.options.get("min_depth", 1))
    depth = dict(model.spec.depths)
    chosen: list[Block] = []
    for i in order:  # the weakest first, each stage keeping at least min_depth blocks
        b = cands[i]
        if depth[b.stage] > min_depth:
            depth[b.stage] -= 1
            chosen.append(b)
    limit = len(chosen)
    if ratio is not None:
        if not 0.0 <= ratio <= 1.0:
            raise UserError(f"--ratio must be in [0, 1], got {ratio}")
        n = int(round(ratio * len(cands)))
        if n > limit:
            raise UserError(f"ratio {ratio} would remove {n} of {len(cands)} blocks, but only {limit} can go "
                            f"while every stage keeps {min_depth} block(s); the largest safe ratio is "
                            f"{int(limit / len(cands) * 1000) / 1000}")
    elif blocks is not None:
        n = blocks
        if not 0 <= n <= limit:
            raise UserError(f"--blocks {n}: between 0 and {limit} of the {len(cands)} removable blocks "
                            f"can go (every stage keeps {min_depth} block(s))")
    else:
        what, target = ("flops", target_flops) if target_flops is not None else ("params", target_params)
        n = _blocks_for_target(model, graph, chosen, what, target, cost)
    plan = LayerPlan(ratio=n / len(cands))
    for b in sorted(chosen[:n], key=lambda b: (b.stage, b.index)):
        plan.removed.setdefault(b.stage, []).append(b.index)
        plan.blocks.append(b)
    return plan


def _blocks_for_target(model: nn.Module, graph: ChannelGraph, chosen: list[Block], what: str, target: float,
                       cost: CostModel | None) -> int:
    if not 0.0 < target <= 1.0:
        raise UserError(f"--target-{what} must be a fraction in (0, 1], got {target}")
    cost = cost or CostModel(model, graph)
    skip: set[str] = set()
    fracs = [1.0]
    for b in chosen:
        skip |= {m for m in graph.calls if is_under(m, b.name)}
        fracs.append(cost.fraction({}, what, skip))
    n = min(range(len(fracs)), key=lambda i: abs(fracs[i] - target))
    if abs(fracs[n] - target) > TARGET_TOLERANCE * target:
        from yoloslim.log import logger

        logger.warning(f"--target-{what} {target}: removing whole blocks reaches {fracs[n]:.3f} at best "
                       f"({n} blocks); combine with a channel method for finer steps")
    return n


def block_renames(spec: ArchSpec, plan: LayerPlan) -> dict[str, str | None]:
    """Old block prefix -> new prefix (None = removed), for every block of the stages that change."""
    out: dict[str, str | None] = {}
    for stage, gone in plan.removed.items():
        j = 0
        for i in range(spec.depths[stage]):
            if i in gone:
                out[f"{stage}.m.{i}."] = None
            else:
                out[f"{stage}.m.{i}."] = f"{stage}.m.{j}."
                j += 1
    return out


def rename_key(key: str, renames: dict[str, str | None]) -> str | None:
    """A state-dict or spec key after the renumbering; None when its block is removed."""
    for old, new in renames.items():
        if (key + ".").startswith(old):
            return None if new is None else (new + key[len(old):] if len(key) >= len(old) else new[:-1])
    return key


def layer_pruned_spec(spec: ArchSpec, plan: LayerPlan) -> ArchSpec:
    """A copy of ``spec`` with the stages' depths reduced and the later blocks renumbered."""
    new = spec.copy()
    renames = block_renames(spec, plan)
    new.channels = {k2: v for k, v in spec.channels.items() if (k2 := rename_key(k, renames)) is not None}
    new.depths = {k2: v for k, v in spec.depths.items() if (k2 := rename_key(k, renames)) is not None}
    for stage, gone in plan.removed.items():
        new.depths[stage] = spec.depths[stage] - len(gone)
    return new


def apply_layer_plan(model: nn.Module, plan: LayerPlan,
                     build: Callable[[ArchSpec], nn.Module] = build_model) -> nn.Module:
    """A new model without the plan's blocks: smaller depths, later blocks renumbered, loaded strictly."""
    src = unwrap(model)
    renames = block_renames(src.spec, plan)
    new = build(layer_pruned_spec(src.spec, plan))
    p = next(src.parameters())
    new = new.to(device=p.device, dtype=p.dtype)
    full = {k: v.detach().clone() for k, v in src.state_dict().items()}
    for stage, gone in plan.removed.items():  # stages that concatenate their blocks' outputs (YOLOv8's C2f)
        fold = getattr(src.get_submodule(stage), "fold_removed_blocks", None)
        if fold is not None:
            fold(stage, full, gone)
    state = {k2: v for k, v in full.items() if (k2 := rename_key(k, renames)) is not None}
    load_state_strict(new, state, source="layer-pruned model")
    return new.train(src.training)


@torch.no_grad()
def mask_layers(model: nn.Module, plan: LayerPlan, copy_model: bool = True) -> nn.Module:
    """The model with the removed blocks' residual branches zeroed (their last γ and β), same shapes."""
    net = copy.deepcopy(unwrap(model)) if copy_model else unwrap(model)
    for b in plan.blocks:
        m = net.get_submodule(b.branch)
        m.weight.zero_()
        if m.bias is not None:
            m.bias.zero_()
    return net
