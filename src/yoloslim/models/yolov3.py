"""The YOLOv3 family, built from a darknet cfg.

Every YOLOv3-family model (YOLOv3, -SPP, -tiny, the MobileNet variants) is a darknet cfg held in
``spec.options["cfg"]``. That cfg is the *template*: the architecture as first described, minus every
width. The widths live where every yoloslim model keeps them, so a pruned model is the same cfg with
smaller numbers:

- ``filters`` of every conv comes from ``spec.channels`` (``module_list.{i}.conv`` for a plain conv,
  ``module_list.{i}.m.{j}.cv{k}.conv`` for conv ``k`` of residual unit ``j`` of a stage);
- the number of units of a stage comes from ``spec.depths["module_list.{i}"]``;
- the convs feeding a ``[yolo]`` layer have ``len(mask) * (5 + spec.nc)`` filters, and the anchors
  their masks select are ``spec.anchors``;
- a depthwise conv (``groups == filters == input channels``) is marked ``depthwise=1`` instead of
  ``groups=``: its groups follow its input when the input is pruned.

Darknet numerics: leaky slope 0.1; batch norm ``eps=1e-5`` (what darknet uses on the GPU through
cuDNN, where weights are trained; its CPU path divides by ``sqrt(var) + 1e-6`` and OpenCV uses
``sqrt(var + 1e-6)``: the difference is below 1e-5 relative for any trained variance). The forward
returns the raw maps of the ``[yolo]`` layers, ``(b, na*(5+nc), h, w)``, ordered by stride.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from yoloslim.errors import UserError
from yoloslim.models.blocks import make_act
from yoloslim.models.darknet_cfg import Section, as_list, check_sections, conv_padding, maxpool_geometry
from yoloslim.models.darknet_graph import Node, build_nodes
from yoloslim.models.darknet_presets import yolov3_cfg, yolov3_tiny_cfg
from yoloslim.models.family import Family
from yoloslim.models.mobilenet import (
    yolov3_lite_cfg,
    yolov3_mobilenet_cfg,
    yolov3_mobilenetv2_cfg,
    yolov3_tiny_mobilenet_cfg,
)
from yoloslim.models.spec import ArchSpec, Widths

BN_EPS = 1e-5
BN_MOMENTUM = 0.03


def darknet_act(name: str) -> nn.Module:
    """A darknet activation by its cfg name (``swish`` is PyTorch's SiLU)."""
    return make_act({"swish": "silu"}.get(name, name))


class DarknetConv(nn.Module):
    """A ``[convolutional]`` layer: ``conv`` (with a bias when there is no batch norm), ``bn``, ``act``."""

    def __init__(self, c1: int, c2: int, k: int, s: int, p: int, g: int, bn: bool, act: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, p, groups=g, bias=not bn)
        self.has_bn = bn
        if bn:
            self.bn = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = darknet_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.has_bn:
            x = self.bn(x)
        return self.act(x)


class ResidualUnit(nn.Module):
    """Convs ``cv1 … cvN`` in a chain, added to the unit's input (a darknet ``[shortcut]``)."""

    def __init__(self, convs: list[DarknetConv], act: str) -> None:
        super().__init__()
        self.names = [f"cv{k + 1}" for k in range(len(convs))]
        for name, conv in zip(self.names, convs, strict=True):
            self.add_module(name, conv)
        self.linear = act == "linear"  # then the unit ends in the add, which layer pruning looks for
        if not self.linear:
            self.act = darknet_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for name in self.names:
            y = getattr(self, name)(y)
        return x + y if self.linear else self.act(x + y)


class ResidualStage(nn.Module):
    """Consecutive residual units ``m.0 … m.{n-1}`` (the layer pruner removes units)."""

    def __init__(self, units: list[ResidualUnit]) -> None:
        super().__init__()
        self.m = nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class Route(nn.Module):
    """``[route]``: one earlier output, or several concatenated along channels."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, 1) if len(xs) > 1 else xs[0]


class Shortcut(nn.Module):
    """A ``[shortcut]`` that is not part of a residual unit: ``act(previous + from)``."""

    def __init__(self, act: str) -> None:
        super().__init__()
        self.act = darknet_act(act)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return self.act(xs[0] + xs[1])


class DarknetMaxPool(nn.Module):
    """Darknet's max-pool: padding ``before`` on the left/top and ``after`` on the right/bottom.

    Darknet skips window positions outside the map; replicating the edge gives the same maximum
    (every window that reaches past the edge also covers the edge pixel).
    """

    def __init__(self, size: int, stride: int, before: int, after: int) -> None:
        super().__init__()
        self.pad = (before, after, before, after) if before != after else None
        self.m = nn.MaxPool2d(size, stride, padding=before if before == after else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad, mode="replicate")
        return self.m(x)


class YOLOLayer(nn.Module):
    """``[yolo]``: marks an output; the raw map passes through (decoding lives in models/decode.py)."""

    def __init__(self, mask: list[int], stride: int) -> None:
        super().__init__()
        self.mask = mask
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class YOLOv3(nn.Module):
    """A YOLOv3-family detector built from ``spec.options["cfg"]`` and the spec's widths.

    Args:
        spec: the architecture; see the module docstring for what the cfg and the spec each hold.
        record: fill ``spec.channels``/``depths``/``anchors``/``strides`` from a full darknet cfg
            (with ``filters=`` and ``classes=``) and replace the cfg by its width-free template.
    """

    def __init__(self, spec: ArchSpec, record: bool = False) -> None:
        super().__init__()
        self.spec = spec
        cfg: list[Section] = spec.options["cfg"]
        self.nodes = build_nodes(cfg, spec.name)
        w = Widths(spec, record)
        self.module_list = nn.ModuleDict()
        template: dict[int, Section] = {}  # darknet index -> width-free section
        ch: list[int] = []  # output channels per node
        st: list[float] = []  # stride per node
        levels: list[tuple[float, int, list[float]]] = []  # (stride, node position, anchors) per [yolo]
        heads = {n.inputs[0] for n in self.nodes if n.kind == "yolo"}
        na = {len(_mask(cfg[n.layers[0] + 1])) for n in self.nodes if n.kind == "yolo"}
        if len(na) != 1:
            raise UserError(f"{spec.name}: every [yolo] layer needs the same number of anchors in its mask")
        no = na.pop() * (5 + spec.nc)
        for pos, node in enumerate(self.nodes):
            c_in = [3 if j < 0 else ch[j] for j in node.inputs]
            s_in = [1.0 if j < 0 else st[j] for j in node.inputs]
            name = f"module_list.{node.key}"
            sec = cfg[node.layers[0] + 1]
            s_out = s_in[0]
            if node.kind == "conv":
                head = no if pos in heads else None
                m = self._conv(w, f"{name}.conv", sec, c_in[0], node.layers[0], template, head)
                c_out, s_out = m.conv.out_channels, s_in[0] * m.conv.stride[0]
            elif node.kind == "stage":
                m, c_out = self._stage(w, name, node, cfg, c_in[0], template)
                if c_out != c_in[0]:
                    raise UserError(f"{spec.name}: residual stage {name} maps {c_in[0]} channels to {c_out}; "
                                    "a [shortcut] adds equal widths")
            elif node.kind in ("route", "shortcut"):
                where = f"{spec.name}: layer {node.key} [{node.kind}]"
                if len(set(s_in)) != 1:
                    raise UserError(f"{where} joins maps of strides {s_in}")
                if node.kind == "shortcut" and c_in[0] != c_in[1]:
                    raise UserError(f"{where} adds {c_in[1]} to {c_in[0]} channels")
                m = Route() if node.kind == "route" else Shortcut(sec.get("activation", "linear"))
                c_out = sum(c_in) if node.kind == "route" else c_in[0]
            elif node.kind == "upsample":
                m = nn.Upsample(scale_factor=int(sec.get("stride", 2)), mode="nearest")
                c_out, s_out = c_in[0], s_in[0] / int(sec.get("stride", 2))
            elif node.kind == "maxpool":
                size, stride, before, after = maxpool_geometry(sec)
                m = DarknetMaxPool(size, stride, before, after)
                c_out, s_out = c_in[0], s_in[0] * stride
            else:  # yolo
                where = f"{spec.name}: layer {node.key} [yolo]"
                if self.nodes[node.inputs[0]].kind != "conv":
                    raise UserError(f"{where} must follow a [convolutional] layer")
                if not float(s_in[0]).is_integer():
                    raise UserError(f"{where} sits at fractional stride {s_in[0]}")
                anchors = [float(a) for a in as_list(sec["anchors"])]
                mask = _mask(sec)
                m = YOLOLayer(mask, int(s_in[0]))
                levels.append((s_in[0], pos, [v for k in mask for v in anchors[2 * k:2 * k + 2]]))
                template[node.layers[0]] = {k: v for k, v in sec.items() if k != "classes"}
                c_out = c_in[0]
            if node.kind not in ("conv", "stage", "yolo"):
                template[node.layers[0]] = dict(sec)
            self.module_list[node.key] = m
            ch.append(c_out)
            st.append(s_out)
        w.check_all_used()
        levels.sort(key=lambda t: t[0])
        self.out_nodes = [pos for _, pos, _ in levels]
        self.multi_input = [n.kind in ("route", "shortcut") for n in self.nodes]
        strides = [int(s) for s, _, _ in levels]
        if record:
            spec.strides = strides
            spec.anchors = [a for _, _, a in levels]
            spec.options["cfg"] = [cfg[0]] + [template[i] for i in sorted(template)]
        elif strides != list(spec.strides):
            raise UserError(f"{spec.name}: the cfg's [yolo] strides {strides} differ from the spec's "
                            f"{spec.strides}")
        self._initialize_biases()

    def _conv(self, w: Widths, name: str, sec: Section, c_in: int, index: int, template: dict[int, Section],
              head_filters: int | None) -> DarknetConv:
        """A conv from its section: width from the spec, or ``head_filters`` for a [yolo] input."""
        dw = bool(sec.get("depthwise", 0))
        groups = int(sec.get("groups", 1))
        if "filters" in sec and head_filters is None:  # a full cfg, being recorded
            dw = groups > 1 and groups == c_in == int(sec["filters"])
        c_out = head_filters if head_filters is not None else w.ch(name, int(sec.get("filters", 0)))
        if dw:
            if c_out != c_in:
                raise UserError(f"{self.spec.name}: depthwise conv {name} has {c_in} input channels but "
                                f"{c_out} outputs; the two are pruned together")
            groups = c_in
        elif c_in % groups or c_out % groups:
            raise UserError(f"{self.spec.name}: conv {name} ({c_in} -> {c_out} channels) cannot have "
                            f"groups={groups}")
        keep = {k: v for k, v in sec.items() if k not in ("filters", "groups", "depthwise")}
        if dw:
            keep["depthwise"] = 1
        elif groups > 1:
            keep["groups"] = groups
        template[index] = keep
        bn = bool(int(sec.get("batch_normalize", 0)))
        k, stride = int(sec["size"]), int(sec.get("stride", 1))
        act = str(sec.get("activation", "linear"))
        return DarknetConv(c_in, c_out, k, stride, conv_padding(sec), groups, bn, act)

    def _stage(self, w: Widths, name: str, node: Node, cfg: list[Section], c_in: int,
               template: dict[int, Section]) -> tuple[ResidualStage, int]:
        depth = w.depth(name, len(node.units))
        if not 0 <= depth <= len(node.units):
            raise UserError(f"{self.spec.name}: stage {name} has {len(node.units)} units in its cfg, "
                            f"the spec asks for {depth}")
        units, c = [], c_in
        for j, unit in enumerate(node.units[:depth]):  # a layer-pruned stage keeps its first `depth` units
            convs = []
            for k, idx in enumerate(unit.convs):
                conv_name = f"{name}.m.{j}.cv{k + 1}.conv"
                convs.append(self._conv(w, conv_name, cfg[idx + 1], c, idx, template, None))
                c = convs[-1].conv.out_channels
            act = cfg[unit.shortcut + 1].get("activation", "linear")
            template[unit.shortcut] = dict(cfg[unit.shortcut + 1])
            units.append(ResidualUnit(convs, act))
        return ResidualStage(units), c

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Args: x (b, 3, h, w) RGB in 0..1. Returns [(b, na*(5+nc), h/s, w/s) for s in strides]."""
        outs: list[torch.Tensor] = []
        for m, node, multi in zip(self.module_list.values(), self.nodes, self.multi_input, strict=True):
            xs = [x if j < 0 else outs[j] for j in node.inputs]
            outs.append(m(xs) if multi else m(xs[0]))
        return [outs[j] for j in self.out_nodes]

    @property
    def head_convs(self) -> list[nn.Conv2d]:
        """The convs feeding the [yolo] layers (in output order); their widths are fixed by ``nc``."""
        return [self.module_list[self.nodes[self.nodes[j].inputs[0]].key].conv for j in self.out_nodes]

    def _initialize_biases(self) -> None:
        """Objectness and class priors in the head biases (as YOLOv5 does), for training from scratch."""
        na = self.spec.num_anchors
        for conv, s in zip(self.head_convs, self.spec.strides, strict=True):
            if conv.bias is None:
                continue
            b = conv.bias.view(na, -1)  # (na, 5 + nc)
            with torch.no_grad():
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5:] += math.log(0.6 / (self.spec.nc - 0.99)) if self.spec.nc > 1 else 0.0


def spec_from_cfg(sections: list[Section], name: str, nc: int | None = None, source: str = "cfg") -> ArchSpec:
    """The spec of a full darknet cfg (with ``filters=`` and ``classes=``), widths and anchors recorded.

    Args:
        sections: parsed cfg (see :func:`yoloslim.models.darknet_cfg.parse_cfg`).
        name: the model's name in the spec.
        nc: number of classes; ``None`` keeps the cfg's ``classes=``.
        source: a name for error messages.

    Raises:
        UserError: an unsupported section or key, inconsistent [yolo] layers, or a head conv whose
            ``filters=`` is not ``len(mask) * (5 + classes)``.
    """
    check_sections(sections, source)
    yolos = [(i, s) for i, s in enumerate(sections[1:]) if s["type"] == "yolo"]
    if not yolos:
        raise UserError(f"{source}: no [yolo] layer; yoloslim reads YOLOv3-style detectors")
    classes = {int(s["classes"]) for _, s in yolos}
    if len(classes) != 1:
        raise UserError(f"{source}: the [yolo] layers disagree on classes= ({sorted(classes)})")
    cfg_nc = classes.pop()
    for i, s in yolos:
        prev = sections[i]  # the layer before the yolo (sections[0] is [net])
        want = len(_mask(s)) * (5 + cfg_nc)
        if prev["type"] != "convolutional" or int(prev["filters"]) != want:
            raise UserError(f"{source}: layer {i - 1} feeding [yolo] layer {i} must be a [convolutional] "
                            f"with filters={want} (len(mask) * (5 + classes)), got {prev.get('filters')}")
    spec = ArchSpec(family=FAMILY.name, name=name, nc=cfg_nc if nc is None else int(nc),
                    options={"cfg": [dict(s) for s in sections], "decode": FAMILY.decode, **FAMILY.input_options()})
    with torch.device("meta"):  # shapes only: recording needs no weights
        YOLOv3(spec, record=True)
    return spec


# name -> function(nc) returning the preset's full darknet cfg
PRESETS: dict[str, Callable[[int], list[Section]]] = {
    "yolov3": yolov3_cfg,
    "yolov3-spp": lambda nc: yolov3_cfg(nc, spp=True),
    "yolov3-tiny": yolov3_tiny_cfg,
    "yolov3-mobilenet": yolov3_mobilenet_cfg,
    "yolov3-mobilenetv2": yolov3_mobilenetv2_cfg,
    "yolov3-lite": yolov3_lite_cfg,
    "yolov3-tiny-mobilenet": yolov3_tiny_mobilenet_cfg,
}


def yolov3_spec(name: str, nc: int = 80) -> ArchSpec:
    """The preset spec of ``name`` (a key of :data:`PRESETS`) with every width and depth filled in."""
    return spec_from_cfg(PRESETS[name](nc), name)


FAMILY = Family(
    name="yolov3", builder=YOLOv3, presets={name: (lambda nc, name=name: yolov3_spec(name, nc)) for name in PRESETS},
    loss="yoloslim.loss.yolov3:YOLOv3Loss", decode="darknet", input_bgr=False, input_scale=1 / 255,
    strides=(8, 16, 32), importers={"darknet": "yoloslim.deploy.darknet_io:load_darknet"},
)


def _mask(sec: Section) -> list[int]:
    anchors = as_list(sec.get("anchors"))
    mask = as_list(sec.get("mask"))
    n = int(sec.get("num", len(anchors) // 2))
    mask = [int(m) for m in mask] if mask else list(range(n))
    if any(not 0 <= m < len(anchors) // 2 for m in mask):
        raise UserError(f"[yolo] mask={mask} indexes past its {len(anchors) // 2} anchors")
    return mask
