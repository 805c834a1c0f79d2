"""Import YOLOv5 v6.x / v7.0 checkpoints of the ultralytics repo without their code.

Their ``best.pt`` is a ``torch.save`` of ``{"model": DetectionModel, "ema": ..., ...}`` (possibly half
precision). :func:`load_torch_file` reads it with a restricted unpickler: their module classes become
inert stand-ins holding ``_parameters``, ``_buffers``, ``_modules`` and plain attributes (``yaml``,
``names``, ``stride``, ``f`` ...), and any other global is refused. From the stand-in tree this module
takes the state dict (reference keys ``model.0.conv.weight`` ...), the architecture (layer types and
wiring, multiples, anchors from the Detect buffer) and the class names, checks that it is the v6
P5 topology (n/s/m/l/x or any other multiples; widths are read from the tensors, so a model pruned by a
fork imports too) and builds the same network with yoloslim's YOLOv5 builder.

A plain ``{"model": state_dict}`` file is accepted with the model's yaml (``--cfg yolov5s.yaml``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from yoloslim.deploy.safe_unpickle import StandIn, children, load_torch_file, state_of, submodule
from yoloslim.errors import UserError
from yoloslim.log import logger
from yoloslim.models.blocks import Bottleneck
from yoloslim.models.io import ModelInfo, load_state_strict
from yoloslim.models.spec import ArchSpec
from yoloslim.models.yolov5 import FAMILY, LAYERS, PRESETS, YOLOv5
from yoloslim.safe_parse import load_yaml_file, yaml_error_reason

DETECT = len(LAYERS) - 1  # index of the Detect layer (24)
C3_LAYERS = [i for i, (_, _, kind, _) in enumerate(LAYERS) if kind == "C3"]
STRIDES = [8, 16, 32]
MODEL_CLASSES = {"DetectionModel", "Model", "ModelPruned", "DetectionModelPruned"}
SUPPORTED = "yoloslim imports the YOLOv5 v6.x/v7.0 P5 detector (n/s/m/l/x topology, 3 output levels)"


def import_yolov5(src: str | Path, *, cfg: str | Path | None = None, model: str | None = None,
                  names: list[str] | None = None) -> tuple[nn.Module, ModelInfo]:
    """Read an ultralytics YOLOv5 checkpoint and rebuild it as a yoloslim model (float32, eval mode).

    Args:
        src: ``best.pt`` / ``last.pt`` of the ultralytics repo, or a ``{"model": state_dict}`` file.
        cfg: the model yaml (``yolov5s.yaml``); required for a bare state dict, else only a fallback.
        model: unused for YOLOv5 (the architecture comes from the file); kept for the common signature.
        names: class names overriding the checkpoint's.

    Returns:
        The model with the checkpoint's weights and its :class:`ModelInfo` (no history yet).
    """
    del model
    src = Path(src)
    obj = load_torch_file(src)
    tree, state = _find_model(obj, src)
    if tree is not None:
        layers = _layers_of(tree, src)
        detect = layers[-1]
        arch = tree.__dict__.get("yaml")
        if not isinstance(arch, dict):
            arch = _read_cfg(cfg, src, why="the checkpoint's model has no yaml attribute")
        _check_kinds([_kind(type(m)) for m in layers], _levels(detect, arch), src)
        _check_wiring([getattr(m, "f", None) for m in layers], src)
        state = state_of(tree)
        ck_names = tree.__dict__.get("names")
        stride = detect.__dict__.get("stride")
        if isinstance(stride, torch.Tensor) and [int(s) for s in stride.tolist()] != STRIDES:
            raise UserError(f"{src}: Detect strides {stride.tolist()} are not {STRIDES}; {SUPPORTED}")
    else:
        arch = _read_cfg(cfg, src, why="the file holds only a state dict")
        rows = _cfg_rows(arch, src)
        _check_kinds([_kind(r[2]) for r in rows], _levels(None, arch, rows), src)
        _check_wiring([r[0] for r in rows], src)
        _check_cfg_args(rows, src)
        ck_names = arch.get("names")
    if int(arch.get("ch", 3)) != 3:
        raise UserError(f"{src}: the model takes {arch.get('ch')} input channels; yoloslim models take 3")

    state = _normalise(state)
    spec = _spec(state, arch, src)
    net = YOLOv5(spec)
    if tree is not None:
        _check_modules(net, tree, state, src)
    load_state_strict(net, state, source=str(src))
    net.eval()
    user = names is not None
    labels = class_names(names if user else ck_names, spec.nc, src, from_user=user)
    return net, ModelInfo(spec, labels, _imgsz(obj))


# ---------------------------------------------------------------- finding the model in the file

def _find_model(obj: Any, src: Path) -> tuple[StandIn | None, dict[str, torch.Tensor] | None]:
    """The model stand-in (``ema`` before ``model``, as ultralytics loads) or a state dict."""
    if isinstance(obj, StandIn):
        return _model_root(obj, src), None
    if not isinstance(obj, dict):
        raise UserError(f"{src}: expected a dict with a 'model' entry, found {type(obj).__name__}")
    for key in ("ema", "model"):
        if isinstance(obj.get(key), StandIn):
            return _model_root(obj[key], src), None
    for key in ("model", "state_dict", "ema"):
        if isinstance(obj.get(key), dict) and _is_state(obj[key]):
            return None, obj[key]
    if _is_state(obj):
        return None, obj
    raise UserError(f"{src}: no YOLOv5 model found (keys {sorted(map(str, obj))[:8]}); "
                    "expected an ultralytics checkpoint or {'model': state_dict}")


def _is_state(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _model_root(m: StandIn, src: Path) -> StandIn:
    kind = type(m).__name__
    if m.pickled_name.startswith("ultralytics."):
        raise UserError(f"{src}: a checkpoint of the `ultralytics` package (YOLOv8 era: yolov8/yolo11/yolov5u); "
                        f"import it with `yoloslim import --from ultralytics {src} --out MODEL.safetensors`")
    if kind not in MODEL_CLASSES:
        what = {"SegmentationModel": "a segmentation model", "ClassificationModel": "a classification model"}
        raise UserError(f"{src}: the checkpoint holds {what.get(kind, m.pickled_name)}; {SUPPORTED}")
    return m


def _layers_of(tree: StandIn, src: Path) -> list[StandIn]:
    seq = children(tree).get("model")
    layers = list(children(seq).values()) if seq is not None else []
    if not layers or not all(isinstance(m, StandIn) for m in layers):
        raise UserError(f"{src}: the model has no 'model' layer sequence; {SUPPORTED}")
    return layers


# ---------------------------------------------------------------- architecture checks

def _kind(m: Any) -> str:
    """Layer kind from a stand-in class or a yaml string: ``models.common.C3Pruned`` -> ``C3``."""
    name = m.__name__ if isinstance(m, type) else str(m)
    name = name.rsplit(".", 1)[-1]
    return name.removesuffix("Pruned") or name


def _levels(detect: StandIn | None, arch: dict, rows: list | None = None) -> int:
    if detect is not None and isinstance(detect.__dict__.get("nl"), int):
        return detect.__dict__["nl"]
    if rows and isinstance(rows[-1][0], list):
        return len(rows[-1][0])
    anchors = arch.get("anchors")
    return len(anchors) if isinstance(anchors, list) else 3


def _check_kinds(kinds: list[str], levels: int, src: Path) -> None:
    if "Focus" in kinds:
        raise UserError(f"{src}: a YOLOv5 v5.0 (or older) model with a Focus stem; {SUPPORTED}. "
                        "Re-train or export it with YOLOv5 v6.0 or later")
    if levels != 3:
        raise UserError(f"{src}: a P6 model with {levels} output levels (e.g. yolov5s6); {SUPPORTED}")
    ref = [kind for _, _, kind, _ in LAYERS]
    if kinds[-1:] in (["Segment"], ["IDetect"], ["IAuxDetect"]):
        raise UserError(f"{src}: the head is {kinds[-1]}, not YOLOv5's Detect; {SUPPORTED}")
    for i, (got, want) in enumerate(zip(kinds, ref, strict=False)):
        if got != want:
            raise UserError(f"{src}: layer {i} is {got} where the v6 architecture has {want}; {SUPPORTED}")
    if len(kinds) != len(ref):
        raise UserError(f"{src}: the model has {len(kinds)} layers, the v6 architecture {len(ref)}; "
                        f"{SUPPORTED}")


def _check_wiring(froms: list[Any], src: Path) -> None:
    for i, (got, (want, *_)) in enumerate(zip(froms, LAYERS, strict=True)):
        if got is not None and got != want:
            raise UserError(f"{src}: layer {i} takes input from {got}, the v6 architecture from {want}; "
                            f"{SUPPORTED}")


def _cfg_rows(arch: dict, src: Path) -> list[list]:
    rows = list(arch.get("backbone") or []) + list(arch.get("head") or [])
    if not rows or not all(isinstance(r, (list, tuple)) and len(r) == 4 for r in rows):
        raise UserError(f"{src}: the model yaml lacks backbone/head rows of [from, number, module, args]")
    return [list(r) for r in rows]


def _check_cfg_args(rows: list[list], src: Path) -> None:
    """Kernel, stride, shortcut and pool size of every yaml row against the v6 table."""
    for i, ((_, n, kind, args), (_, ref_n, _, ref_args)) in enumerate(zip(rows, LAYERS, strict=True)):
        args = list(args or [])
        if (n > 1) != (ref_n > 1):
            raise UserError(f"{src}: layer {i} repeats {n}x, the v6 architecture {ref_n}x; {SUPPORTED}")
        k = _kind(kind)
        if k == "Conv" and args[1:] != ref_args[1:]:
            raise UserError(f"{src}: layer {i} Conv has kernel/stride/padding {args[1:]}, "
                            f"v6 has {ref_args[1:]}")
        if k == "C3" and (args[1] if len(args) > 1 else True) != (ref_args[1] if len(ref_args) > 1 else True):
            raise UserError(f"{src}: layer {i} C3 shortcut differs from the v6 architecture")
        if k == "SPPF" and len(args) > 1 and args[1] != ref_args[1]:
            raise UserError(f"{src}: layer {i} SPPF pools with k={args[1]}, v6 with k={ref_args[1]}")


def _check_modules(net: nn.Module, tree: StandIn, state: dict[str, torch.Tensor], src: Path) -> None:
    """Every conv, norm, activation, pool and residual of the stand-ins against the rebuilt model.

    A BatchNorm eps other than ours is folded into ``running_var`` (exact in eval mode).
    """
    for name, ours in net.named_modules():
        theirs = submodule(tree, name) if name else tree
        if theirs is None:
            continue  # our containers without a counterpart are checked through their leaves' weights
        d, kind = theirs.__dict__, type(theirs).__name__
        if isinstance(ours, nn.Conv2d):
            _same(name, kind, "Conv2d", src)
            for attr in ("kernel_size", "stride", "padding", "dilation", "groups"):
                if _pair(d.get(attr)) != _pair(getattr(ours, attr)):
                    raise UserError(f"{src}: {name} has {attr} {d.get(attr)}, the v6 architecture "
                                    f"{getattr(ours, attr)}; {SUPPORTED}")
        elif isinstance(ours, nn.BatchNorm2d):
            _same(name, kind, "BatchNorm2d", src)
            eps = float(d.get("eps", ours.eps))
            if abs(eps - ours.eps) > 1e-12 and f"{name}.running_var" in state:
                state[f"{name}.running_var"] = state[f"{name}.running_var"] + (eps - ours.eps)
        elif isinstance(ours, (nn.SiLU, nn.MaxPool2d, nn.Upsample)):
            _same(name, kind, type(ours).__name__, src)
            for attr in ("kernel_size", "stride", "padding", "scale_factor", "mode"):
                if hasattr(ours, attr) and attr in d and _pair(d[attr]) != _pair(getattr(ours, attr)):
                    raise UserError(f"{src}: {name} has {attr} {d[attr]}, "
                                    f"the v6 architecture {getattr(ours, attr)}")
        elif isinstance(ours, Bottleneck) and bool(d.get("add", ours.add)) != ours.add:
            raise UserError(f"{src}: {name} {'has' if d.get('add') else 'lacks'} a residual add that the "
                            "v6 architecture with these widths does not; inconsistent widths in the file")


def _same(name: str, got: str, want: str, src: Path) -> None:
    if got != want:
        raise UserError(f"{src}: {name} is {got} where yoloslim's YOLOv5 has {want}; {SUPPORTED}")


def _pair(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(float(x) if isinstance(x, float) else x for x in v) if len(set(v)) > 1 else _pair(v[0])
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


# ---------------------------------------------------------------- weights and spec

def _normalise(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference keys, float32 tensors; DDP prefixes and the v5.0 ``anchor_grid`` buffer dropped."""
    out = {}
    for k, v in state.items():
        k = k.removeprefix("module.")
        if k.endswith(".anchor_grid"):
            continue
        out[k] = v.detach().float().clone() if v.is_floating_point() else v.detach().clone()
    for k in [k for k in out if k.endswith(".running_var")]:  # some forks drop the counters
        out.setdefault(k.removesuffix("running_var") + "num_batches_tracked", torch.tensor(0))
    return out


def _spec(state: dict[str, torch.Tensor], arch: dict, src: Path) -> ArchSpec:
    gd, gw = float(arch.get("depth_multiple", 1.0)), float(arch.get("width_multiple", 1.0))
    head = [state.get(f"model.{DETECT}.m.{i}.weight") for i in range(3)]
    if any(h is None for h in head):
        raise UserError(f"{src}: no Detect convs model.{DETECT}.m.0-2 in the weights; {SUPPORTED}")
    anchors = _anchors(state, arch, src)
    na = len(anchors[0]) // 2
    no = head[0].shape[0]
    if no % na or no // na < 6:
        raise UserError(f"{src}: Detect conv has {no} outputs, not a multiple of {na} anchors "
                        "x (5 + classes)")
    nc = no // na - 5
    if "nc" in arch and int(arch["nc"]) != nc:
        logger.warning(f"{src}: the yaml says nc={arch['nc']} but the Detect convs have {nc} classes; "
                       f"using {nc}")
    channels = {k.removesuffix(".weight"): int(v.shape[0])
                for k, v in state.items() if k.endswith(".conv.weight")}
    depths = {}
    for i in C3_LAYERS:
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"model\.{i}\.m\.(\d+)\.", k))}
        if blocks != set(range(len(blocks))) or not blocks:
            raise UserError(f"{src}: the C3 blocks of layer {i} are {sorted(blocks)}; expected 0..n-1")
        depths[f"model.{i}"] = len(blocks)
    name = next((n for n, (d, w) in PRESETS.items() if abs(d - gd) < 1e-6 and abs(w - gw) < 1e-6),
                "yolov5-custom")
    options = {"depth_multiple": gd, "width_multiple": gw, **FAMILY.input_options()}
    return ArchSpec(family=FAMILY.name, name=name, nc=nc, channels=channels, depths=depths, anchors=anchors,
                    strides=list(STRIDES), options=options)


def _anchors(state: dict[str, torch.Tensor], arch: dict, src: Path) -> list[list[float]]:
    """Anchors in input pixels: the Detect buffer (grid units, after any auto-anchor) times the strides."""
    buf = state.get(f"model.{DETECT}.anchors")
    if buf is not None:
        if buf.dim() != 3 or buf.shape[0] != 3 or buf.shape[2] != 2:
            raise UserError(f"{src}: Detect anchors have shape {tuple(buf.shape)}, expected (3, na, 2); "
                            f"{SUPPORTED}")
        return [[float(v) for v in (buf[i] * s).flatten()] for i, s in enumerate(STRIDES)]
    anchors = arch.get("anchors")
    if not (isinstance(anchors, list) and len(anchors) == 3 and all(isinstance(a, list) for a in anchors)):
        raise UserError(f"{src}: no anchors in the weights and none as 3 lists in the yaml (got {anchors!r})")
    return [[float(v) for v in a] for a in anchors]


# ---------------------------------------------------------------- small readers

def _read_cfg(cfg: str | Path | None, src: Path, why: str) -> dict:
    if cfg is None:
        raise UserError(f"{src}: {why}; give the model's yaml with --cfg (e.g. yolov5s.yaml)")
    path = Path(cfg)
    if not path.is_file():
        raise UserError(f"{path}: no such model yaml")
    try:
        data = load_yaml_file(path)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({yaml_error_reason(e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a model yaml mapping "
                        "(nc, depth_multiple, width_multiple, anchors, backbone, head)")
    act = data.get("activation")
    if act is not None and "SiLU" not in str(act):
        raise UserError(f"{path}: activation {act} is not supported; yoloslim's YOLOv5 uses SiLU")
    return data


def class_names(raw: Any, nc: int, src: Path, from_user: bool) -> list[str]:
    if isinstance(raw, dict):
        try:
            raw = [raw[k] for k in sorted(raw, key=int)]
        except (TypeError, ValueError):
            raw = list(raw.values())
    if raw is None:
        return [f"class{i}" for i in range(nc)]
    names = [str(n) for n in raw]
    if len(names) != nc:
        if from_user:
            raise UserError(f"--names gives {len(names)} names, the model has {nc} classes")
        logger.warning(f"{src}: {len(names)} class names for {nc} classes; naming them class0..class{nc - 1}")
        return [f"class{i}" for i in range(nc)]
    return names


def _imgsz(obj: Any) -> int:
    opt = obj.get("opt") if isinstance(obj, dict) else None
    size = opt.get("imgsz", opt.get("img_size")) if isinstance(opt, dict) else None
    if isinstance(size, list) and size:
        size = size[0]
    return int(size) if isinstance(size, int) and size > 0 else 640
