"""The layer graph of a darknet cfg, grouped into the nodes the YOLOv3 builder makes modules of.

Darknet numbers layers flat (``[route] layers=-1,61``). yoloslim groups them so that pruning can
work on them:

- a *residual unit* is a chain of ``[convolutional]`` layers closed by a ``[shortcut]`` back to the
  chain's input (Darknet-53's 1x1 + 3x3, MobileNetV2's expand + depthwise + project), when nothing
  outside the unit reads its inner layers;
- consecutive units of the same structure whose joints nothing else reads form a *stage*, named
  ``module_list.{i}`` after the darknet index ``i`` of its first layer, with units ``.m.0 … .m.{n-1}``:
  the layer pruner removes units and the builder rebuilds the stage with ``spec.depths`` fewer;
- every other layer is a node of its own, named ``module_list.{i}`` after its darknet index.

Names come from the cfg the model was first built from (its *template*), so they stay the same
when units are removed or channels pruned; export renumbers the layers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from yoloslim.errors import UserError
from yoloslim.models.darknet_cfg import Section, as_list


@dataclass
class Unit:
    """One residual unit: darknet indices of its convs, and of the ``[shortcut]`` closing it."""

    convs: list[int]
    shortcut: int


@dataclass
class Node:
    """One module of the built model.

    Attributes:
        key: darknet index of its first layer in the template; the module is ``module_list.{key}``.
        kind: ``conv``, ``stage``, ``route``, ``shortcut``, ``upsample``, ``maxpool`` or ``yolo``.
        layers: darknet indices (template) it covers.
        inputs: positions of the nodes it reads, in order; ``-1`` is the input image.
        refs: for ``route``/``shortcut``, the template's reference values (negative = relative).
        units: the residual units of a stage.
    """

    key: str
    kind: str
    layers: list[int]
    inputs: list[int]
    refs: list[int] = field(default_factory=list)
    units: list[Unit] = field(default_factory=list)


def layer_inputs(sections: list[Section], source: str = "cfg") -> list[list[int]]:
    """Absolute darknet indices each layer reads (``-1``: the image), checked to come before it."""
    out: list[list[int]] = []
    for i, sec in enumerate(sections[1:]):
        kind = sec["type"]
        if kind == "route":
            refs = as_list(sec["layers"])
        elif kind == "shortcut":
            refs = [-1, sec["from"]]
        else:
            refs = [-1]
        srcs = [r if r >= 0 else i + r for r in refs]
        for r, s in zip(refs, srcs, strict=True):
            if s >= i or (s < 0 and kind in ("route", "shortcut")):
                shown = f"{r} (= layer {s})" if r < 0 else f"{r}"
                raise UserError(f"{source}: layer {i} [{kind}] refers to layer {shown}, which is not an "
                                "earlier layer")
            if s >= 0 and sections[s + 1]["type"] == "yolo":
                raise UserError(f"{source}: layer {i} [{kind}] reads the [yolo] layer {s}; yoloslim only "
                                "supports [yolo] as an output")
        out.append(srcs)
    return out


def build_nodes(sections: list[Section], source: str = "cfg") -> list[Node]:
    """Group the layers of ``sections`` (``sections[0]`` is ``[net]``) into nodes; see the module doc."""
    layers = sections[1:]
    inputs = layer_inputs(sections, source)
    readers: dict[int, set[int]] = defaultdict(set)
    for i, srcs in enumerate(inputs):
        for s in srcs:
            readers[s].add(i)

    units: list[Unit] = []
    for s, sec in enumerate(layers):
        if sec["type"] != "shortcut":
            continue
        a = inputs[s][1]
        chain = list(range(a + 1, s))
        if chain and all(layers[j]["type"] == "convolutional" and readers[j] == {j + 1} for j in chain):
            units.append(Unit(chain, s))

    stages: list[list[Unit]] = []
    for u in units:
        prev = stages[-1][-1] if stages else None
        joins = prev is not None and u.convs[0] - 1 == prev.shortcut
        if joins and readers[prev.shortcut] == {u.convs[0], u.shortcut} \
                and _signature(layers, prev) == _signature(layers, u):
            stages[-1].append(u)
        else:
            stages.append([u])
    stage_at = {st[0].convs[0]: st for st in stages}

    nodes: list[Node] = []
    out_pos: dict[int, int] = {-1: -1}  # darknet index of a node's output -> node position
    i = 0
    while i < len(layers):
        kind = layers[i]["type"]
        if i in stage_at:
            st = stage_at[i]
            last = st[-1].shortcut
            nodes.append(Node(str(i), "stage", list(range(i, last + 1)), [out_pos[i - 1]], units=st))
            out_pos[last] = len(nodes) - 1
            i = last + 1
            continue
        refs = []
        if kind == "route":
            refs = as_list(layers[i]["layers"])
        elif kind == "shortcut":
            refs = [-1, layers[i]["from"]]
        nodes.append(Node(str(i), "conv" if kind == "convolutional" else kind, [i],
                          [out_pos[s] for s in inputs[i]], refs=refs))
        out_pos[i] = len(nodes) - 1
        i += 1
    return nodes


def _signature(layers: list[Section], unit: Unit) -> tuple:
    """A unit's structure without its widths: units of one stage must be interchangeable."""
    skip = ("filters", "groups", "depthwise")  # widths, which pruning changes
    convs = tuple(tuple(sorted((k, str(v)) for k, v in layers[j].items() if k not in skip))
                  for j in unit.convs)
    return convs, layers[unit.shortcut].get("activation", "linear")
