"""Darknet ``.cfg`` + ``.weights`` in and out of yoloslim's YOLOv3 family.

The ``.weights`` layout is darknet's (``src/parser.c``, ``load_weights``/``save_weights``): a header
of int32 ``major``, ``minor``, ``revision``, then ``seen`` (images trained on: int64 when
``major * 10 + minor >= 2``, else int32), then for every ``[convolutional]`` layer in cfg order,
float32: with batch norm β, γ, running mean, running variance, otherwise the bias; then the kernel
``(filters, channels / groups, size, size)``. Nothing else carries weights in the supported sections.

Import builds the model from the cfg (:func:`yoloslim.models.yolov3.spec_from_cfg`) and fills it in
that order; a file that ends early, or holds more than the cfg needs, is refused naming the layer.
Export writes the cfg of the model as it is now: pruned widths as ``filters=``, removed residual
units left out and the ``[route]``/``[shortcut]`` indices renumbered, ``classes=`` and the masked
anchors from the spec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from yoloslim.errors import UserError
from yoloslim.models import build_model, check_model_size
from yoloslim.models.darknet_cfg import Section, as_list, format_cfg, read_cfg
from yoloslim.models.io import ModelInfo, atomic_write, save_model, unwrap
from yoloslim.models.yolov3 import DarknetConv, YOLOv3, spec_from_cfg

HEADER = (0, 2, 0)  # major, minor, revision written by export: ``seen`` is then an int64


def darknet_layers(model: nn.Module, imgsz: int | None = None) -> tuple[list[Section], list[DarknetConv]]:
    """The darknet cfg of ``model`` as it is now, and its convs in the order ``.weights`` stores them.

    Args:
        model: a YOLOv3-family model (pruned or not).
        imgsz: written as ``width``/``height`` of ``[net]`` when given.
    """
    model = unwrap(model)
    if not isinstance(model, YOLOv3):
        raise UserError(f"darknet export needs a YOLOv3-family model, not {model.spec.family!r}")
    spec = model.spec
    cfg = spec.options["cfg"]
    net = dict(cfg[0])
    if imgsz:
        net["width"] = net["height"] = int(imgsz)
    out: list[Section] = [net]
    convs: list[DarknetConv] = []
    new_index: dict[int, int] = {-1: -1}  # node position -> darknet index of its output in the export
    level = {pos: i for i, pos in enumerate(model.out_nodes)}
    for pos, (node, m) in enumerate(zip(model.nodes, model.module_list.values(), strict=True)):
        here = len(out) - 1  # the darknet index of the next layer written
        tmpl = cfg[node.layers[0] + 1]
        if node.kind == "conv":
            out.append(_conv_section(tmpl, m))
            convs.append(m)
        elif node.kind == "stage":
            for unit_module, unit in zip(m.m, node.units, strict=False):  # removed units are not in m.m
                for k, idx in enumerate(unit.convs):
                    conv = getattr(unit_module, f"cv{k + 1}")
                    out.append(_conv_section(cfg[idx + 1], conv))
                    convs.append(conv)
                out.append({**cfg[unit.shortcut + 1], "from": -(len(unit.convs) + 1)})
            if len(m.m) == 0:  # every unit removed: the stage is its input
                new_index[pos] = new_index[node.inputs[0]]
                continue
        elif node.kind in ("route", "shortcut"):
            refs = [new_index[j] - here if r < 0 else new_index[j] for r, j in zip(node.refs, node.inputs,
                                                                                    strict=True)]
            if node.kind == "route":
                out.append({**tmpl, "layers": refs[0] if len(refs) == 1 else refs})
            else:
                out.append({**tmpl, "from": refs[1]})
        elif node.kind == "yolo":
            anchors = [float(a) for a in as_list(tmpl["anchors"])]
            mask = m.mask
            mine = spec.anchors[level[pos]]
            for q, k in enumerate(mask):
                anchors[2 * k:2 * k + 2] = mine[2 * q:2 * q + 2]
            out.append({**tmpl, "mask": mask, "anchors": [_num(a) for a in anchors], "classes": spec.nc})
        else:
            out.append(dict(tmpl))
        new_index[pos] = len(out) - 2
    return out, convs


def _conv_section(tmpl: Section, m: DarknetConv) -> Section:
    sec: Section = {"type": "convolutional"}
    if m.has_bn:
        sec["batch_normalize"] = 1
    sec["filters"] = m.conv.out_channels
    sec.update({k: v for k, v in tmpl.items() if k not in ("type", "batch_normalize", "filters", "depthwise",
                                                             "groups", "activation")})
    if m.conv.groups > 1:
        sec["groups"] = m.conv.groups
    sec["activation"] = tmpl.get("activation", "linear")
    return sec


def _num(v: float) -> int | float:
    return int(v) if float(v).is_integer() else v


def write_darknet(model: nn.Module, cfg_path: str | Path, weights_path: str | Path, imgsz: int | None = None,
                  seen: int = 0) -> tuple[Path, Path]:
    """Write ``model`` as a darknet ``.cfg`` and ``.weights`` pair (atomically)."""
    sections, convs = darknet_layers(model, imgsz)
    chunks = [np.array(HEADER, dtype="<i4").tobytes(), np.array([seen], dtype="<i8").tobytes()]
    for m in convs:
        parts = [m.bn.bias, m.bn.weight, m.bn.running_mean, m.bn.running_var] if m.has_bn else [m.conv.bias]
        parts.append(m.conv.weight)
        chunks += [p.detach().to("cpu", torch.float32).numpy().astype("<f4").tobytes() for p in parts]
    cfg_path, weights_path = Path(cfg_path), Path(weights_path)
    atomic_write(cfg_path, lambda tmp: Path(tmp).write_text(format_cfg(sections)))
    atomic_write(weights_path, lambda tmp: Path(tmp).write_bytes(b"".join(chunks)))
    return cfg_path, weights_path


def read_weights(path: str | Path) -> tuple[dict[str, int], np.ndarray]:
    """The header (``major``, ``minor``, ``revision``, ``seen``) and the float32 values of a weights file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such weights file")
    raw = path.read_bytes()
    if len(raw) < 16:
        raise UserError(f"{path}: {len(raw)} bytes is too short for a darknet weights header")
    major, minor, revision = (int(v) for v in np.frombuffer(raw, "<i4", 3))
    wide = major * 10 + minor >= 2 and major < 1000 and minor < 1000
    seen = int(np.frombuffer(raw, "<i8" if wide else "<i4", 1, 12)[0])
    start = 20 if wide else 16
    if (len(raw) - start) % 4:
        raise UserError(f"{path}: {len(raw) - start} bytes after the header is not a whole number of floats")
    header = {"major": major, "minor": minor, "revision": revision, "seen": seen}
    return header, np.frombuffer(raw, "<f4", offset=start).copy()


@torch.no_grad()
def load_darknet_weights(model: nn.Module, path: str | Path) -> dict[str, int]:
    """Fill ``model`` from a darknet ``.weights`` file in cfg order; returns the file's header.

    Raises:
        UserError: the file ends inside a layer (named), or holds values past the last layer.
    """
    header, data = read_weights(path)
    _, convs = darknet_layers(model)
    names = {id(m): n for n, m in unwrap(model).named_modules()}
    pos = 0
    for i, m in enumerate(convs):
        tensors = [m.bn.bias, m.bn.weight, m.bn.running_mean, m.bn.running_var] if m.has_bn else [m.conv.bias]
        tensors.append(m.conv.weight)
        need = sum(t.numel() for t in tensors)
        if pos + need > data.size:
            raise UserError(f"{path}: the file ends inside conv {i} of the cfg ({names[id(m)]}, "
                            f"{m.conv.in_channels}->{m.conv.out_channels}): it needs {need} values, "
                            f"{data.size - pos} remain; the weights do not belong to this cfg "
                            "(or are truncated)")
        for t in tensors:
            t.copy_(torch.from_numpy(data[pos:pos + t.numel()]).view_as(t))
            pos += t.numel()
    if pos != data.size:
        raise UserError(f"{path}: {data.size - pos} values remain after the last conv "
                        f"({names[id(convs[-1])]}); the weights do not belong to this cfg")
    return header


def load_darknet(src: Path, *, cfg: Path | None = None, model: str | None = None,
                 names: list[str] | None = None) -> tuple[nn.Module, ModelInfo]:
    """The ``yoloslim import --from darknet`` importer: ``src`` is the ``.weights``, ``cfg`` the ``.cfg``.

    Args:
        src: the darknet weights file.
        cfg: the darknet cfg file (required).
        model: the model's name in the spec (default: the cfg's file name).
        names: class names (default ``class0`` ...).
    """
    if cfg is None:
        raise UserError("--from darknet needs the architecture: --cfg FILE.cfg")
    cfg = Path(cfg)
    sections = read_cfg(cfg)
    try:  # a cfg is a user's text file: any value may be malformed
        spec = spec_from_cfg(sections, name=model or cfg.stem, source=str(cfg))
        imgsz = max(int(sections[0].get("width", 416)), int(sections[0].get("height", 416)))
    except UserError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, ZeroDivisionError) as e:
        raise UserError(f"{cfg}: malformed darknet cfg ({e.__class__.__name__}: {str(e)[:80]})") from None
    check_model_size(spec, str(cfg))
    net = build_model(spec)
    load_darknet_weights(net, src)
    if names is not None and len(names) != spec.nc:
        raise UserError(f"{len(names)} class names for a cfg with classes={spec.nc}")
    return net.eval(), ModelInfo(spec, list(names) if names else [f"class{i}" for i in range(spec.nc)], imgsz)


def import_darknet(cfg: str | Path, weights: str | Path, out: str | Path,
                   names: list[str] | None = None) -> tuple[nn.Module, ModelInfo]:
    """Import a darknet ``.cfg`` + ``.weights`` pair and save it as a yoloslim model file ``out``."""
    net, info = load_darknet(Path(weights), cfg=Path(cfg), names=names)
    info = info.with_event("imported", source="darknet", cfg=Path(cfg).name, weights=Path(weights).name)
    save_model(out, net, info)
    return net, info


def export_darknet(model: nn.Module, info: ModelInfo, out_cfg: str | Path,
                   out_weights: str | Path) -> tuple[Path, Path]:
    """Write a YOLOv3-family model (pruned ones too) as ``out_cfg`` + ``out_weights`` for darknet."""
    return write_darknet(model, out_cfg, out_weights, imgsz=info.imgsz)
