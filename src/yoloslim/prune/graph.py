"""Which channels are coupled: the dependency graph of a detector, found by tracing its forward.

The model's forward is traced with :mod:`torch.fx` (convs, batch norms, activations, pools and
upsampling stay leaves) and every tensor is described by its *layout* (:mod:`yoloslim.prune.layouts`):
the list of channel *sources* its channels come from, in order. A non-depthwise ``Conv2d`` starts a new source of
``out_channels`` channels; batch norms, activations, pools, upsampling and depthwise convs pass the
layout through; ``torch.cat`` on the channel dimension concatenates layouts; an element-wise
``add``/``mul``/... between tensors ties their sources together (union-find), which is how residual
adds couple channels. A union of tied sources is a :class:`Group`: removing channel ``i`` of a
group removes channel ``i`` of every source in it, from every producer, batch norm, depthwise conv
and consumer that touches it.

A group is not prunable when it reaches a model output (the head's prediction convs), holds the
input image, meets an op the tracer does not understand (a reshape, a grouped conv), when a
producer's width is not in the spec, or when the model lists its producer in a ``fixed_channels``
mapping (conv name -> reason; YOLO11's attention convs); :attr:`Group.reason` says which.

Channel splits (YOLOv8's C2f / C3k2 / C2PSA: ``a, b = cv1(x).split(sizes, 1)``): a conv whose output
reaches ``split`` / ``chunk`` on the channel dimension (through batch norms and activations) starts one
source per piece, and the split hands each piece its own layout. The pieces are then separate groups,
pruned independently; the conv is a producer of each, at the piece's offset
(:attr:`Group.producer_offsets`). The model must read its split sizes from its spec (YOLOv8 keeps them
in ``options["split"]``, which :func:`yoloslim.prune.surgery.pruned_spec` updates), so that the compact
model splits at the new boundaries. A split that cuts across a source stays an op the graph cannot follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from yoloslim.errors import UserError
from yoloslim.models.io import unwrap
from yoloslim.prune.layouts import PASSTHROUGH_MODULES, Layout, LayoutTracer

__all__ = ["PASSTHROUGH_MODULES", "ChannelGraph", "Group", "Member", "ModuleCall", "is_under"]


@dataclass
class Member:
    """A module touching a group's channels, at ``offset`` in its own channel dimension."""

    module: str
    offset: int


@dataclass
class Group:
    """Coupled channels: every source in the group loses the same indices.

    Attributes:
        id: index in :attr:`ChannelGraph.groups`.
        size: channels of each source in the group.
        producers: convs whose output channels start the group's sources (module names).
        bns: batch norms over the group's channels (each at an offset).
        consumers: non-depthwise convs reading the group's channels (input offset).
        depthwise: depthwise convs carrying the group's channels (in == out == groups).
        prunable: False when the channels are fixed; ``reason`` then says why.
        producer_offsets: row offset of the group in a producer's output, for producers whose output is
            split into several groups (absent: 0, the producer's whole output).
    """

    id: int
    size: int
    producers: list[str] = field(default_factory=list)
    bns: list[Member] = field(default_factory=list)
    consumers: list[Member] = field(default_factory=list)
    depthwise: list[Member] = field(default_factory=list)
    prunable: bool = True
    reason: str = ""
    producer_offsets: dict[str, int] = field(default_factory=dict)

    def rows(self, producer: str) -> slice:
        """The rows of ``producer``'s output (its weight's first dimension) that hold this group."""
        off = self.producer_offsets.get(producer, 0)
        return slice(off, off + self.size)

    @property
    def name(self) -> str:
        """The first producer's name, which identifies the group in reports."""
        return self.producers[0] if self.producers else "input"

    def describe(self) -> str:
        more = f" (+{len(self.producers) - 1} coupled)" if len(self.producers) > 1 else ""
        return f"{self.name}{more}"


@dataclass
class ModuleCall:
    """Where a conv or batch norm sits in the graph: its input and output layouts (group ids, -1 = fixed)."""

    kind: str  # "conv" | "depthwise" | "grouped" | "bn"
    inputs: list[tuple[int, int]] | None  # [(group id or -1, size)], None when opaque
    outputs: list[tuple[int, int]] | None


class ChannelGraph:
    """Coupled channel groups of a model, and where every conv and batch norm sits among them.

    Build it with :meth:`trace`. ``groups`` lists every group (prunable or not) in forward order;
    ``calls`` maps each Conv2d / BatchNorm2d module name to its :class:`ModuleCall`; ``bn_after``
    maps a conv to the batch norm that directly follows it; ``fx_graph`` is the traced graph (layer
    pruning reads residual blocks from it).
    """

    def __init__(self) -> None:
        self.groups: list[Group] = []
        self.calls: dict[str, ModuleCall] = {}
        self.bn_after: dict[str, str] = {}
        self.fx_graph: fx.Graph | None = None

    # ------------------------------------------------------------------ queries
    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def group_of(self, module: str) -> Group:
        """The group a producer conv starts."""
        for g in self.groups:
            if module in g.producers:
                return g
        raise KeyError(module)

    def select(self, include: list[str] | None) -> list[Group]:
        """Prunable groups with a producer named by one of the ``include`` prefixes (all when None)."""
        if not include:
            return self.prunable
        unknown = [p for p in include if not any(is_under(m, p) for m in self.calls)]
        if unknown:
            raise UserError(f"--include {' '.join(unknown)}: no conv or batch norm of the model has that "
                            f"name (names look like {next(iter(self.calls), 'model.0.conv')!r})")
        chosen = [g for g in self.prunable if any(is_under(p, pre) for p in g.producers for pre in include)]
        if not chosen:
            raise UserError(f"--include {' '.join(include)}: nothing prunable there (its channels are fixed "
                            "by the head, the input or an op the graph cannot follow)")
        return chosen

    def summary(self) -> str:
        lines = []
        for g in self.groups:
            state = "prunable" if g.prunable else f"fixed: {g.reason}"
            lines.append(f"[{g.id}] {g.describe()} size={g.size} bns={len(g.bns)} "
                         f"consumers={len(g.consumers)} depthwise={len(g.depthwise)} {state}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ tracing
    @classmethod
    def trace(cls, model: nn.Module) -> ChannelGraph:
        """Trace ``model``'s forward and find its coupled channel groups."""
        model = unwrap(model)
        try:
            graph = fx.Tracer().trace(model)
        except Exception as e:  # fx raises TraceError, TypeError, ... on data-dependent control flow
            raise UserError(f"cannot trace {type(model).__name__}.forward for pruning "
                            f"({e.__class__.__name__}: {e}); keep the forward free of data-dependent "
                            "Python control flow") from None
        return _build(LayoutTracer(model, graph).run())


def is_under(name: str, prefix: str) -> bool:
    """True when ``name`` is ``prefix`` or inside it (dotted boundary)."""
    return name == prefix or name.startswith(prefix + ".")


def _build(t: LayoutTracer) -> ChannelGraph:
    """The graph of a finished walk: one group per union of tied sources, numbered in forward order."""
    cg = ChannelGraph()
    cg.fx_graph = t.graph
    spec = getattr(t.model, "spec", None)
    widths = set(spec.channels) if spec is not None else set()
    for s, p in enumerate(t.producer):
        if p is not None and p not in widths and s not in t.fixed:
            t.fixed[s] = f"width of {p} is not in the spec"
    # one group per union root, numbered in forward order
    root_gid: dict[int, int] = {}
    for s in range(len(t.size)):
        r = t.uf.find(s)
        if r not in root_gid:
            root_gid[r] = len(cg.groups)
            cg.groups.append(Group(id=root_gid[r], size=t.size[s]))
        g = cg.groups[root_gid[r]]
        if t.size[s] != g.size:
            raise RuntimeError(f"pruning graph bug: coupled sources of different sizes in group {g.id}")
        if t.producer[s] is not None and t.producer[s] not in g.producers:
            g.producers.append(t.producer[s])
            if t.offset[s]:
                g.producer_offsets[t.producer[s]] = t.offset[s]
        if s in t.fixed and g.prunable:
            g.prunable, g.reason = False, f"{t.producer[s] or 'the input'} {t.fixed[s]}"

    def layout(v: Any) -> list[tuple[int, int]] | None:
        if not isinstance(v, Layout):
            return None
        return [(root_gid[t.uf.find(s)], t.size[s]) for s in v]

    for name, kind, x, out in t.records:
        call = ModuleCall(kind, layout(x), layout(out))
        if name in cg.calls:  # a module called twice must see the same channels both times
            if cg.calls[name].inputs != call.inputs or cg.calls[name].outputs != call.outputs:
                for gid, _ in (cg.calls[name].inputs or []) + (call.inputs or []) + (call.outputs or []):
                    grp = cg.groups[gid]
                    if grp.prunable:
                        grp.prunable, grp.reason = False, f"{name} is called on different channels"
            continue
        cg.calls[name] = call
        m = t.modules[name]
        if kind == "conv" and call.inputs is not None:
            _check(sum(n for _, n in call.inputs) == m.in_channels, name)
            _add_members(cg, call.inputs, name, "consumers")
        elif kind == "depthwise":
            _add_members(cg, call.inputs, name, "depthwise")
        elif kind == "bn" and call.inputs is not None:
            _check(sum(n for _, n in call.inputs) == m.num_features, name)
            _add_members(cg, call.inputs, name, "bns")
    for node in t.graph.nodes:  # conv -> the batch norm reading it directly
        if node.op == "call_module" and isinstance(t.modules[str(node.target)], nn.BatchNorm2d):
            src = node.args[0]
            if isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1:
                if isinstance(t.modules[str(src.target)], nn.Conv2d):
                    cg.bn_after[str(src.target)] = str(node.target)
    return cg


def _add_members(cg: ChannelGraph, layout: list[tuple[int, int]] | None, name: str, attr: str) -> None:
    """Add module ``name`` to the ``attr`` list of every group in ``layout``, at its channel offset."""
    off = 0
    for gid, n in layout or []:
        getattr(cg.groups[gid], attr).append(Member(name, off))
        off += n


def _check(ok: bool, name: str) -> None:
    if not ok:
        raise RuntimeError(f"pruning graph bug: the channels reaching {name} do not add up to its width")
