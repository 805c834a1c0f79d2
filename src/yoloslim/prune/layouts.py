"""Channel layouts: where each tensor's channels come from, followed through a model's traced forward.

Every tensor of the :mod:`torch.fx` graph is described by its *layout*: the list of channel *sources*
its channels come from, in order. A non-depthwise ``Conv2d`` starts a new source of ``out_channels``
channels (one per piece when its output is split, see :mod:`yoloslim.prune.splits`); batch norms,
activations, pools, upsampling and depthwise convs pass the layout through; ``torch.cat`` on the
channel dimension concatenates layouts; an element-wise op between tensors ties their sources together
(union-find). An op the walk does not understand fixes the sources that reach it. The walk records
every conv and batch norm with its input and output layouts; :mod:`yoloslim.prune.graph` turns the
tied sources into groups.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as F

from yoloslim.prune.splits import find_splits, split_ranges, split_request

INPUT_CHANNELS = 3  # every model takes (b, 3, h, w)

# Leaf modules that keep channels as they are.
PASSTHROUGH_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Mish,
    nn.GELU, nn.ELU, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad2d,
    nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)
PASSTHROUGH_FUNCTIONS: set[Any] = {
    F.relu, F.relu6, F.leaky_relu, F.silu, F.hardswish, F.hardsigmoid, F.gelu, F.elu, F.mish, F.sigmoid,
    F.tanh, F.interpolate, F.upsample, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d, F.dropout, torch.sigmoid, torch.relu, torch.tanh, torch.clamp, torch.clip,
    operator.neg, torch.neg,
}
PASSTHROUGH_METHODS = {
    "sigmoid", "relu", "tanh", "clamp", "clip", "contiguous", "float", "half", "to", "clone", "detach",
    "type_as", "sigmoid_", "relu_", "clamp_", "neg", "exp", "abs", "sqrt", "pow", "square",
}
ELEMENTWISE = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, operator.truediv,
    operator.itruediv, torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum, torch.pow,
}
ELEMENTWISE_METHODS = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum", "pow",
}
META_METHODS = {"size", "dim", "numel", "shape"}


class _Opaque:
    """A tensor whose channels the graph cannot follow (after a reshape, a split, ...)."""

    def __repr__(self) -> str:
        return "OPAQUE"


class _Meta:
    """A non-tensor value: a shape, a size, a number computed from them."""

    def __repr__(self) -> str:
        return "META"


class Layout(tuple):
    """The channel sources of a tensor, in channel order (a tuple of source ids)."""


OPAQUE = _Opaque()
META = _Meta()


class UnionFind:
    """Disjoint sets of source ids (path compression; the smaller id is the root)."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class LayoutTracer:
    """Propagates layouts through the fx graph; one instance per trace.

    After :meth:`run`: ``uf`` ties sources together; per source, ``size``, ``producer`` (None for the input
    image), ``offset`` (its first row in the producer's output) and, when it cannot be pruned, ``fixed``
    (the reason); ``records`` lists every conv and batch norm call as (module, kind, input layout, output
    layout).
    """

    def __init__(self, model: nn.Module, graph: fx.Graph) -> None:
        self.model = model
        self.graph = graph
        self.modules = dict(model.named_modules())
        self.uf = UnionFind()
        self.size: list[int] = []
        self.producer: list[str | None] = []
        self.fixed: dict[int, str] = {}  # source -> reason
        self.offset: list[int] = []  # source -> its first row in its producer's output
        self.split_at: dict[str, list[int]] = {}  # conv -> its output's pieces, from the splits it reaches
        # convs whose output channels the model itself declares fixed, with the reason (``fixed_channels``)
        self.declared: dict[str, str] = dict(getattr(model, "fixed_channels", {}) or {})
        self.env: dict[fx.Node, Any] = {}
        self.records: list[tuple[str, str, Any, Any]] = []  # (module, kind, in value, out value)

    # sources -----------------------------------------------------------
    def new_source(self, size: int, producer: str | None, fixed: str | None = None, offset: int = 0) -> int:
        s = self.uf.add()
        self.size.append(size)
        self.producer.append(producer)
        self.offset.append(offset)
        fixed = self.declared.get(producer or "", fixed)
        if fixed:
            self.fixed[s] = fixed
        return s

    def taint(self, value: Any, reason: str) -> None:
        """Mark every source inside ``value`` (a layout, or lists of them) unprunable."""
        if isinstance(value, Layout):
            for s in value:
                self.fixed.setdefault(s, reason)
        elif isinstance(value, (list, tuple)):
            for v in value:
                self.taint(v, reason)
        elif isinstance(value, dict):
            for v in value.values():
                self.taint(v, reason)

    def unify(self, layouts: list[Layout], reason: str) -> Layout:
        """Tie layouts that meet in an element-wise op; returns the output layout."""
        first = layouts[0]
        for other in layouts[1:]:
            if other == first:
                continue
            sizes_a = [self.size[s] for s in first]
            sizes_b = [self.size[s] for s in other]
            if sizes_a == sizes_b:
                for a, b in zip(first, other, strict=True):
                    self.uf.union(a, b)
            elif len(other) == 1 and self.size[other[0]] == 1:  # (b, 1, h, w) broadcast over channels
                self.taint(other, f"{reason} broadcasts a single channel")
            elif len(first) == 1 and self.size[first[0]] == 1:
                self.taint(first, f"{reason} broadcasts a single channel")
                first = other
            else:
                self.taint([first, other], f"{reason} of tensors whose channel layouts differ")
        return first

    # values ------------------------------------------------------------
    def val(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return [self.val(x) for x in a] if isinstance(a, list) else tuple(self.val(x) for x in a)
        if isinstance(a, dict):
            return {k: self.val(v) for k, v in a.items()}
        return a  # a python constant

    @staticmethod
    def is_layout(v: Any) -> bool:
        return isinstance(v, Layout)

    def tensors(self, values: Any) -> list[Any]:
        """Layouts and opaque tensors inside ``values`` (flattening lists)."""
        out: list[Any] = []
        if self.is_layout(values) or values is OPAQUE:
            out.append(values)
        elif isinstance(values, (list, tuple)):
            for v in values:
                out.extend(self.tensors(v))
        elif isinstance(values, dict):
            for v in values.values():
                out.extend(self.tensors(v))
        return out

    def unknown(self, what: str, args: Any) -> Any:
        """An op the graph cannot follow: its inputs become fixed and its output opaque."""
        ts = self.tensors(args)
        if not ts:
            return META
        self.taint(ts, f"reaches {what}, which the pruning graph cannot follow")
        return OPAQUE

    # the walk ----------------------------------------------------------
    def run(self) -> LayoutTracer:
        """Walk the graph once; returns ``self``, its sources and records filled in."""
        self.split_at = find_splits(self.graph, self.modules, PASSTHROUGH_MODULES)
        for node in self.graph.nodes:
            if node.op == "placeholder":
                self.env[node] = Layout((self.new_source(INPUT_CHANNELS, None, "holds the input image"),))
            elif node.op == "get_attr":
                self.env[node] = OPAQUE  # a parameter or buffer used as a tensor
            elif node.op == "call_module":
                self.env[node] = self.call_module(node)
            elif node.op in ("call_function", "call_method"):
                self.env[node] = self.call_function(node)
            elif node.op == "output":
                self.taint(self.val(node.args), "reaches a model output")
        for conv in getattr(self.model, "head_convs", []) or []:
            name = next((n for n, m in self.modules.items() if m is conv), None)
            for s, p in enumerate(self.producer):
                if p == name:
                    self.fixed.setdefault(s, "is a head prediction conv")
        return self

    def call_module(self, node: fx.Node) -> Any:
        name = str(node.target)
        m = self.modules[name]
        args = self.val(node.args)
        x = args[0] if args else None
        if isinstance(m, nn.Conv2d):
            if m.groups == 1:
                pieces = self.split_at.get(name, [m.out_channels])
                starts = [sum(pieces[:i]) for i in range(len(pieces))]
                out = Layout(self.new_source(n, name, offset=o) for n, o in zip(pieces, starts, strict=True))
                self.records.append((name, "conv", x, out))
                return out
            if m.groups == m.in_channels == m.out_channels and self.is_layout(x):
                self.records.append((name, "depthwise", x, x))
                return x
            reason = f"meets grouped conv {name} (groups={m.groups})"
            self.taint(x, reason)
            out = Layout((self.new_source(m.out_channels, name, reason),))
            self.records.append((name, "grouped", x, out))
            return out
        if isinstance(m, nn.BatchNorm2d):
            self.records.append((name, "bn", x, x))
            return x
        if isinstance(m, PASSTHROUGH_MODULES):
            return x
        return self.unknown(f"module {name} ({type(m).__name__})", args)

    def call_function(self, node: fx.Node) -> Any:
        t = node.target
        args = self.val(node.args)
        kwargs = self.val(node.kwargs)
        method = node.op == "call_method"
        what = f".{t}()" if method else getattr(t, "__name__", str(t))
        ts = self.tensors([args, kwargs])
        if not ts:
            return META  # arithmetic on shapes and numbers
        if (method and t in META_METHODS) or (t is getattr and args[1] in ("shape", "dtype", "device")):
            return META
        if t in (torch.cat, torch.concat) or (method and t in ("cat", "concat")):
            return self.cat(args, kwargs, what)
        if t is operator.getitem and isinstance(args[0], (list, tuple)) and isinstance(args[1], int):
            return args[0][args[1]]  # a piece of a split
        if split_request(node) is not None:
            return self.split(node, args, what)
        if (method and t in ELEMENTWISE_METHODS) or (not method and t in ELEMENTWISE):
            if any(v is OPAQUE for v in ts):
                return self.unknown(what, ts)
            return self.unify(ts, what)
        if (method and t in PASSTHROUGH_METHODS) or (not method and t in PASSTHROUGH_FUNCTIONS):
            if len(ts) == 1:
                return ts[0]
            return self.unknown(what, ts)
        if t is F.pad and len(args) > 1 and len(args[1]) <= 4:
            return args[0]
        if t is operator.getitem and self.is_layout(args[0]) and _spatial_index(args[1]):
            return args[0]
        if method and t in ("mean", "sum", "amax", "amin") and self.is_layout(args[0]):
            dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
            dims = (dims,) if isinstance(dims, int) else dims
            keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
            if dims is not None and not {1, -3} & set(dims) and keepdim:
                return args[0]
        return self.unknown(what, ts)

    def cat(self, args: Any, kwargs: Any, what: str) -> Any:
        xs = args[0] if args else kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if any(not self.is_layout(x) for x in xs):
            return self.unknown(what, xs)
        if dim in (1, -3):
            return Layout(s for x in xs for s in x)
        return self.unify(list(xs), f"{what} on dim {dim}")

    def split(self, node: fx.Node, args: Any, what: str) -> Any:
        """``x.split(sizes, 1)`` / ``x.chunk(n, 1)`` along source boundaries: a tuple of layouts, one per piece."""
        x = args[0]
        ranges = split_ranges([self.size[s] for s in x], split_request(node)) if self.is_layout(x) else None
        if ranges is None:
            return self.unknown(f"{what} across a conv's output", args)
        return tuple(Layout(x[i:j]) for i, j in ranges)


def _spatial_index(idx: Any) -> bool:
    """True for ``x[..., a, b]`` / ``x[:, :, a, b]``-style indexing that keeps dims 0 and 1 whole."""
    if not isinstance(idx, tuple):
        return idx is Ellipsis or idx == slice(None)
    if idx and idx[0] is Ellipsis:
        return len(idx) <= 3 and all(isinstance(i, slice) for i in idx[1:])
    full = slice(None)
    return len(idx) >= 2 and idx[0] == full and idx[1] == full and all(isinstance(i, slice) or i is Ellipsis
                                                                        for i in idx[2:])

