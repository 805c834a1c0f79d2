"""Surgery: turn a channel plan into a genuinely smaller model, or mask the original for comparison.

:func:`apply_plan` writes the new width of every conv into a copy of the spec, builds a NEW model
from it with the family's normal builder and copies the kept slices of every tensor into it
(output rows of producers and their batch norms with running statistics, input columns of consumers
at the right offsets, both of depthwise convs). Loading is strict, so a slicing mistake is an error,
never a silently wrong model. :func:`mask_model` zeroes γ and β of the removed channels instead,
which must give the same outputs (DESIGN.md, invariant 1).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from yoloslim.models import build_model
from yoloslim.models.io import load_state_strict, unwrap
from yoloslim.models.profile import probe
from yoloslim.models.spec import ArchSpec
from yoloslim.prune.graph import ChannelGraph, ModuleCall


@dataclass
class ChannelPlan:
    """Which channels of which groups survive.

    Attributes:
        graph: the graph the group ids refer to.
        keep: group id -> sorted indices of the kept channels; groups not listed keep everything.
        held: names of groups that ``min_channels`` kept from being emptied or cut below the floor.
        ratio: the ratio the plan was made for (for reports).
    """

    graph: ChannelGraph
    keep: dict[int, torch.Tensor] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)
    ratio: float = 0.0

    def kept(self, gid: int, size: int) -> int:
        return len(self.keep[gid]) if gid in self.keep else size

    def removed(self) -> int:
        """Channels removed, counted once per group."""
        return sum(self.graph.groups[g].size - len(k) for g, k in self.keep.items())

    def index(self, layout: list[tuple[int, int]] | None,
              device: torch.device | None = None) -> torch.Tensor | None:
        """Indices kept along a dimension with this layout; None when nothing changes there."""
        if layout is None or not any(g in self.keep for g, _ in layout):
            return None
        parts, off = [], 0
        for gid, n in layout:
            parts.append((self.keep[gid] if gid in self.keep else torch.arange(n)) + off)
            off += n
        return torch.cat(parts).to(device) if parts else None

    def widths(self) -> dict[str, int]:
        """New output width of every conv whose width changes."""
        out = {}
        for name, call in self.graph.calls.items():
            if call.kind in ("conv", "depthwise") and call.outputs is not None:
                if any(g in self.keep for g, _ in call.outputs):
                    out[name] = sum(self.kept(g, n) for g, n in call.outputs)
        return out


def pruned_spec(spec: ArchSpec, plan: ChannelPlan) -> ArchSpec:
    """A copy of ``spec`` with the plan's conv widths."""
    new = spec.copy()
    for name, width in plan.widths().items():
        if name in new.channels:
            new.channels[name] = width
        elif plan.graph.calls[name].kind != "depthwise":  # depthwise widths may follow their input
            raise RuntimeError(f"pruning bug: conv {name} changes width but the spec does not list it")
    for name, sizes in new.options.get("split", {}).items():  # a split conv's pieces (YOLOv8's C2f)
        outputs = plan.graph.calls[name].outputs if name in plan.graph.calls else None
        if outputs is not None and len(outputs) == len(sizes):
            sizes[:] = [plan.kept(g, n) for g, n in outputs]
        elif outputs is not None and any(g in plan.keep for g, _ in outputs):
            raise RuntimeError(f"pruning bug: conv {name} is split in {len(sizes)} pieces, the graph sees "
                               f"{len(outputs)}")
    return new


@torch.no_grad()
def slice_state(model: nn.Module, plan: ChannelPlan) -> dict[str, torch.Tensor]:
    """The model's state dict with every tensor cut to the plan's kept channels."""
    model = unwrap(model)
    state = {}
    for mname, m in model.named_modules():
        call = plan.graph.calls.get(mname)
        for pname, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            key = f"{mname}.{pname}" if mname else pname
            state[key] = _slice(t, pname, call, plan) if call is not None else t.detach().clone()
    full = model.state_dict()
    return {k: state.get(k, v) for k, v in full.items()}


def _slice(t: torch.Tensor, pname: str, call: ModuleCall, plan: ChannelPlan) -> torch.Tensor:
    t = t.detach()
    if t.dim() == 0:  # num_batches_tracked
        return t.clone()
    out_idx = plan.index(call.outputs, t.device)
    if out_idx is not None:
        t = t.index_select(0, out_idx)
    if call.kind == "conv" and pname == "weight":
        in_idx = plan.index(call.inputs, t.device)
        if in_idx is not None:
            t = t.index_select(1, in_idx)
    return t.clone()


def apply_plan(model: nn.Module, plan: ChannelPlan,
               build: Callable[[ArchSpec], nn.Module] = build_model) -> nn.Module:
    """A new, smaller model: ``build(pruned spec)`` with the kept slices of every tensor loaded strictly.

    The new model is in the same train/eval mode as ``model``; ``model`` itself is not changed.
    """
    src = unwrap(model)
    spec = pruned_spec(src.spec, plan)
    new = build(spec)
    p = next(src.parameters())
    new = new.to(device=p.device, dtype=p.dtype)
    load_state_strict(new, slice_state(src, plan), source="pruned model")
    return new.train(src.training)


def removed_rows(plan: ChannelPlan) -> dict[str, torch.Tensor]:
    """Module name -> bool mask (CPU) of the output rows the plan removes, for the modules that carry them.

    Every batch norm whose channels lose rows, and every conv or depthwise conv that loses rows with
    no batch norm after it; a conv followed by a batch norm is left to that batch norm.
    """
    out: dict[str, torch.Tensor] = {}
    for name, call in plan.graph.calls.items():
        if call.kind not in ("bn", "conv", "depthwise") or call.outputs is None:
            continue
        keep = plan.index(call.outputs)
        if keep is None or (call.kind != "bn" and name in plan.graph.bn_after):
            continue
        drop = torch.ones(sum(n for _, n in call.outputs), dtype=torch.bool)
        drop[keep.cpu()] = False
        out[name] = drop
    return out


@torch.no_grad()
def mask_model(model: nn.Module, plan: ChannelPlan, copy_model: bool = True, beta: bool = True) -> nn.Module:
    """The model with γ and β of every removed channel set to zero (same shapes).

    Convs that carry removed channels without a batch norm after them get those output rows (and
    bias) zeroed instead (:func:`removed_rows`). With activations that map 0 to 0 the removed
    channels are then exactly zero everywhere, so the masked model computes what the compact one
    does. With ``beta=False`` only γ is zeroed: removed channels then emit the constant act(β) that
    :func:`fold_bias` folds.
    """
    net = copy.deepcopy(unwrap(model)) if copy_model else unwrap(model)
    modules = dict(net.named_modules())
    for name, drop in removed_rows(plan).items():
        m = modules[name]
        drop = drop.to(m.weight.device)
        m.weight[drop] = 0
        if m.bias is not None and beta:
            m.bias[drop] = 0
    return net


@torch.no_grad()
def fold_bias(model: nn.Module, compact: nn.Module, plan: ChannelPlan, imgsz: int = 64) -> list[str]:
    """Fold the constant act(β) that removed channels emitted into the following convs (in ``compact``).

    A removed channel with γ ≈ 0 still outputs the constant act(β) (summed over a residual chain).
    Each consumer conv then received ``W[:, removed] · const`` per output channel: it is added to the
    consumer's bias, or subtracted from the running mean of the batch norm that follows it. Exact away
    from zero-padded borders when the removed γ are 0. The constants are read from one forward of
    ``model`` with the removed γ zeroed. Returns the consumers that could not take a bias (no bias,
    no batch norm after them).

    Args:
        model: the model the plan was made for (unchanged).
        compact: ``apply_plan(model, plan)``, modified in place.
        plan: the channel plan.
        imgsz: input size of the forward that reads the constants.
    """
    src = mask_model(model, plan, beta=False).eval()
    graph = plan.graph
    removed_cols: dict[str, torch.Tensor] = {}
    for name, call in graph.calls.items():
        if call.kind == "conv" and call.inputs is not None:
            keep = plan.index(call.inputs)
            if keep is not None:
                drop = torch.ones(sum(n for _, n in call.inputs), dtype=torch.bool)
                drop[keep] = False
                removed_cols[name] = drop
    seen: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(m: nn.Module, inputs: tuple) -> None:
            x = inputs[0]  # (b, c, h, w)
            seen[name] = x[0, :, x.shape[2] // 2, x.shape[3] // 2].detach().clone()
        return fn

    probe(src, imgsz, pre_hooks={n: hook(n) for n in removed_cols})
    skipped = []
    for name, drop in removed_cols.items():
        w = model.get_submodule(name).weight.detach()  # (out, in, kh, kw)
        const = seen[name][drop.to(w.device)]  # (removed,)
        delta = w[:, drop.to(w.device)].sum((2, 3)) @ const  # (out,)
        out_keep = plan.index(graph.calls[name].outputs, w.device)
        if out_keep is not None:
            delta = delta[out_keep]
        conv = compact.get_submodule(name)
        if conv.bias is not None:
            conv.bias += delta
        elif name in graph.bn_after:
            compact.get_submodule(graph.bn_after[name]).running_mean -= delta
        else:
            skipped.append(name)
    return skipped
