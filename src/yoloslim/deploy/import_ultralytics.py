"""Import YOLOv8, YOLO11 and YOLOv5u checkpoints saved by the ``ultralytics`` package (8.x) without their code.

Their ``best.pt`` / ``last.pt`` is a ``torch.save`` of a dict: ``model`` and, while training, ``ema``
(a pickled ``ultralytics.nn.tasks.DetectionModel``, usually half precision), ``train_args``,
``version``, ``date`` ... :func:`load_torch_file` reads it with the restricted unpickler: every
ultralytics and ``torch.nn`` class becomes an inert stand-in holding its ``_parameters``, ``_buffers``,
``_modules`` and plain attributes (``yaml``, ``names``, ``nc``, ``stride``, ``f`` ...); any other
global is refused before anything runs. From the stand-ins this module reads

* the architecture: the model's ``yaml`` dict (its backbone/head rows, ``scale``, ``scales``, ``nc``)
  and the class of every layer, both checked row by row against the YOLOv8, YOLO11 or YOLOv5u table
  of :mod:`yoloslim.models.yolov8`; anything else (segment / pose / OBB / classify heads, end-to-end
  heads of YOLOv10 and YOLO26, RT-DETR, P2/P6 variants, custom yaml files) is refused with one line;
* the weights (``ema`` when it holds a model, as ultralytics loads, else ``model``), loaded strictly
  into the yoloslim preset of that version and scale; a batch-norm ``eps`` other than ours is folded
  into ``running_var`` (exact in eval mode);
* the class names (``names``, a ``{0: "person", ...}`` dict) and the training image size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from yoloslim.deploy.import_yolov5 import class_names
from yoloslim.deploy.safe_unpickle import StandIn, children, load_torch_file, state_of, submodule
from yoloslim.errors import UserError
from yoloslim.log import logger
from yoloslim.models import model_spec
from yoloslim.models.io import ModelInfo, load_state_strict
from yoloslim.models.yolov8 import LAYERS, PRESETS, YOLOv8

SUPPORTED = ("yoloslim imports ultralytics' YOLOv8, YOLO11 and YOLOv5u detectors (n/s/m/l/x, 3 output "
             "levels, as their yolov8.yaml / yolo11.yaml / yolov5.yaml build them)")
NAMES = {"v8": "YOLOv8", "11": "YOLO11", "5u": "YOLOv5u"}
# model classes ultralytics pickles for tasks other than plain detection, and what they are
OTHER_TASKS = {
    "SegmentationModel": "a segmentation model", "PoseModel": "a pose model", "OBBModel": "an oriented-box model",
    "ClassificationModel": "a classification model", "RTDETRDetectionModel": "an RT-DETR model",
    "WorldModel": "a YOLO-World model", "YOLOEModel": "a YOLOE model", "YOLOESegModel": "a YOLOE model",
}
OTHER_HEADS = {"Segment": "segmentation", "Pose": "pose", "OBB": "oriented-box", "Classify": "classification",
               "v10Detect": "YOLOv10 end-to-end", "RTDETRDecoder": "RT-DETR", "WorldDetect": "YOLO-World",
               "YOLOEDetect": "YOLOE"}
REG_MAX = 16
# a yaml row's trailing arguments when left out (after the output width), as the modules default them
ARG_DEFAULTS = {"Conv": [None, 1, 1, None], "C2f": [None, False], "C3k2": [None, False, 0.5], "SPPF": [None, 5],
                "C3": [None, True]}


def import_ultralytics(src: str | Path, *, cfg: str | Path | None = None, model: str | None = None,
                       names: list[str] | None = None) -> tuple[nn.Module, ModelInfo]:
    """Read an ultralytics 8.x YOLOv8 / YOLO11 checkpoint and rebuild it as a yoloslim model (float32, eval).

    Args:
        src: their ``best.pt`` / ``last.pt`` (or a released ``yolov8n.pt``, ``yolo11s.pt`` ...).
        cfg: unused: the architecture is in the file (kept for the common importer signature).
        model: unused likewise; the preset follows from the file's yaml.
        names: class names overriding the checkpoint's.

    Returns:
        The model with the checkpoint's weights and its :class:`ModelInfo` (no history yet).
    """
    del cfg, model
    src = Path(src)
    obj = load_torch_file(src)
    tree = _find_model(obj, src)
    arch = tree.__dict__.get("yaml")
    if not isinstance(arch, dict):
        raise UserError(f"{src}: the checkpoint's model has no yaml dict (its architecture); {SUPPORTED}")
    layers = _layers_of(tree, src)
    try:  # the yaml and the attributes are whatever the pickle holds: odd types are a damaged file
        version = _version(arch, layers, src)
        name = _preset(arch, version, src)
        state = _float_state(state_of(tree))
        nc = _num_classes(state, layers, src)
        if arch.get("nc") != nc:
            logger.warning(f"{src}: the yaml says nc={arch.get('nc')} but the Detect convs have {nc} classes; "
                           f"using {nc}")
        spec = model_spec(name, nc)
        net = YOLOv8(spec)
        _check_modules(net, tree, state, src)
    except UserError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise UserError(f"{src}: damaged or unexpected model description in the checkpoint "
                        f"({e.__class__.__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})") from None
    load_state_strict(net, state, source=str(src))
    net.eval()
    user = names is not None
    raw = tree.__dict__.get("names")
    labels = class_names(names if user else raw if isinstance(raw, (dict, list, tuple)) else None, nc, src,
                         from_user=user)
    return net, ModelInfo(spec, labels, _imgsz(obj))


# ---------------------------------------------------------------- finding the model in the file

def _find_model(obj: Any, src: Path) -> StandIn:
    """The pickled model: ``ema`` when it holds one (as ultralytics loads), else ``model``."""
    if isinstance(obj, StandIn):
        return _model_root(obj, src)
    if not isinstance(obj, dict):
        raise UserError(f"{src}: expected a dict with a 'model' entry, found {type(obj).__name__}")
    for key in ("ema", "model"):
        if isinstance(obj.get(key), StandIn):
            return _model_root(obj[key], src)
    if isinstance(obj.get("model"), dict):
        raise UserError(f"{src}: the file holds a bare state dict, which does not say its architecture; "
                        "give the ultralytics checkpoint itself (best.pt, with its pickled model)")
    raise UserError(f"{src}: no ultralytics model found (keys {sorted(map(str, obj))[:8]}); {SUPPORTED}")


def _model_root(m: StandIn, src: Path) -> StandIn:
    kind = type(m).__name__
    if kind in OTHER_TASKS:
        raise UserError(f"{src}: the checkpoint holds {OTHER_TASKS[kind]}; {SUPPORTED}")
    if kind != "DetectionModel":
        raise UserError(f"{src}: the checkpoint holds {m.pickled_name}, not a DetectionModel; {SUPPORTED}")
    if not m.pickled_name.startswith("ultralytics."):
        raise UserError(f"{src}: a YOLOv5-repo checkpoint ({m.pickled_name}); import it with --from yolov5")
    return m


def _layers_of(tree: StandIn, src: Path) -> list[StandIn]:
    layers = list(children(children(tree).get("model")).values())
    if not layers or not all(isinstance(m, StandIn) for m in layers):
        raise UserError(f"{src}: the model has no 'model' layer sequence; {SUPPORTED}")
    return layers


# ---------------------------------------------------------------- which architecture

def _version(arch: dict, layers: list[StandIn], src: Path) -> str:
    """``"v8"`` or ``"11"``: the table whose rows the yaml and the pickled layers both follow."""
    head = layers[-1]
    kind = type(head).__name__
    if kind in OTHER_HEADS:
        raise UserError(f"{src}: the head is {kind}, a {OTHER_HEADS[kind]} head; {SUPPORTED}")
    if kind != "Detect":
        raise UserError(f"{src}: the last layer is {head.pickled_name}, not a Detect head; {SUPPORTED}")
    d = head.__dict__
    if arch.get("end2end") or d.get("end2end"):
        raise UserError(f"{src}: an end-to-end (NMS-free) head, as YOLOv10 and YOLO26 have; {SUPPORTED}")
    reg_max = next((r for r in (d.get("reg_max"), arch.get("reg_max")) if r is not None and r != REG_MAX), REG_MAX)
    if reg_max != REG_MAX:
        raise UserError(f"{src}: the Detect head has reg_max {reg_max} (YOLOv8 / YOLO11: {REG_MAX}); {SUPPORTED}")
    if int(arch.get("channels", arch.get("ch", 3))) != 3:
        raise UserError(f"{src}: the model takes {arch.get('channels', arch.get('ch'))} input channels; "
                        "yoloslim models take 3")
    rows = list(arch.get("backbone") or []) + list(arch.get("head") or [])
    if not rows or not all(isinstance(r, (list, tuple)) and len(r) == 4 for r in rows):
        raise UserError(f"{src}: the model yaml lacks backbone/head rows of [from, number, module, args]")
    kinds = [_kind(type(m).__name__) for m in layers]
    for version, table in LAYERS.items():
        if kinds == [kind for _, _, kind, _ in table] and _rows_match(rows, table):
            if [getattr(m, "f", None) for m in layers] != [f for f, *_ in table]:
                raise UserError(f"{src}: the layers are wired differently from {NAMES[version]}; {SUPPORTED}")
            return version
    raise UserError(f"{src}: {_what(arch, kinds)}; {SUPPORTED}")


def _kind(name: str) -> str:
    """A yaml module or class name as the tables spell it: ``nn.Upsample`` -> ``Upsample``."""
    return str(name).rsplit(".", 1)[-1]


def _rows_match(rows: list, table: list, cap: int | None = None) -> bool:
    """The yaml rows against a table: from, repeats, module and the kernel/shortcut arguments; the output
    widths too when ``cap`` (the scale's max channels) is given, compared after capping: the per-scale
    yaml files of early 8.0 releases write the capped widths (768 in yolov8m.yaml) where the scaled
    yolov8.yaml writes 1024."""
    if len(rows) != len(table):
        return False
    for (f, n, kind, args), (rf, rn, rkind, rargs) in zip(rows, table, strict=True):
        if f != rf or n != rn or _kind(kind) != rkind:
            return False
        if rkind not in ("Upsample", "Concat", "Detect") and _args(rkind, args, cap) != _args(rkind, rargs, cap):
            return False
    return True


def _args(kind: str, args: Any, cap: int | None) -> list:
    """A row's arguments with the module's defaults filled in (a yaml may leave ``shortcut=False`` out), its
    output width capped at ``cap`` (or left out without one)."""
    given = list(args or [])
    full = given + ARG_DEFAULTS.get(kind, [])[len(given):]
    return [min(full[0], cap) if cap else None, *full[1:]] if full else full


def _what(arch: dict, kinds: list[str]) -> str:
    """A short description of an architecture that is neither table, for the refusal."""
    file = str(arch.get("yaml_file", ""))
    if kinds.count("Detect") and len(kinds) not in (len(t) for t in LAYERS.values()):
        return f"a model of {len(kinds)} layers{f' ({file})' if file else ''} (a P2/P6 or custom variant)"
    return f"the layers{f' of {file}' if file else ''} differ from the YOLOv8, YOLO11 and YOLOv5u tables"


def _preset(arch: dict, version: str, src: Path) -> str:
    """The preset of the file's scale (``yolov8s``, ``yolo11m`` ...)."""
    scale = arch.get("scale")
    scales = arch.get("scales")
    if isinstance(scales, dict) and scale in scales:
        gd, gw, cap = scales[scale]
    elif "depth_multiple" in arch and "width_multiple" in arch:
        gd, gw, cap = arch["depth_multiple"], arch["width_multiple"], None
    else:
        raise UserError(f"{src}: the yaml names no scale (n/s/m/l/x) nor depth/width multiples; {SUPPORTED}")
    rows = list(arch.get("backbone") or []) + list(arch.get("head") or [])
    for name, (v, d, w, c) in PRESETS.items():
        if v == version and abs(d - float(gd)) < 1e-6 and abs(w - float(gw)) < 1e-6 and cap in (c, None):
            if version == "11" and scale and name[-1] != scale:
                continue  # YOLO11's m/l/x switch C3k on by the scale's letter
            if _rows_match(rows, LAYERS[version], cap=c):
                return name
    raise UserError(f"{src}: {NAMES[version]} with depth {gd}, width {gw}, max channels {cap} is not one of the "
                    f"n/s/m/l/x scales; {SUPPORTED}")


# ---------------------------------------------------------------- weights and checks

def _float_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float32 copies of the floating tensors (the file is usually half precision)."""
    return {k: v.detach().float().clone() if v.is_floating_point() else v.detach().clone() for k, v in state.items()}


def _num_classes(state: dict[str, torch.Tensor], layers: list[StandIn], src: Path) -> int:
    i = len(layers) - 1
    last = [state.get(f"model.{i}.cv3.{j}.2.weight") for j in range(3)]
    if any(t is None for t in last) or len({int(t.shape[0]) for t in last}) != 1:
        raise UserError(f"{src}: no class convs model.{i}.cv3.0-2.2 of one width in the weights; {SUPPORTED}")
    return int(last[0].shape[0])


def _check_modules(net: nn.Module, tree: StandIn, state: dict[str, torch.Tensor], src: Path) -> None:
    """Every conv, norm and activation of the stand-ins against the rebuilt model (what the weights do
    not say: kernel, stride, padding, groups, eps, activation); a different eps is folded into running_var."""
    for name, ours in net.named_modules():
        theirs = submodule(tree, name) if name else tree
        if theirs is None:
            continue  # our containers without a counterpart: their leaves' weights are checked by loading
        d, kind = theirs.__dict__, type(theirs).__name__
        if isinstance(ours, nn.Conv2d):
            for attr in ("kernel_size", "stride", "padding", "dilation", "groups"):
                got, want = d.get(attr), getattr(ours, attr)
                if kind != "Conv2d" or (got is not None and _ints(got) != _ints(want)):
                    raise UserError(f"{src}: {name} is {kind} with {attr} {got}, yoloslim's {want}; {SUPPORTED}")
        elif isinstance(ours, nn.BatchNorm2d):
            if kind != "BatchNorm2d":
                raise UserError(f"{src}: {name} is {kind} where yoloslim has BatchNorm2d; {SUPPORTED}")
            eps = float(d.get("eps", ours.eps))
            if abs(eps - ours.eps) > 1e-12 and f"{name}.running_var" in state:
                state[f"{name}.running_var"] = state[f"{name}.running_var"] + (eps - ours.eps)
        elif isinstance(ours, (nn.SiLU, nn.Identity, nn.MaxPool2d, nn.Upsample)) and kind != type(ours).__name__:
            raise UserError(f"{src}: {name} is {kind} where yoloslim has {type(ours).__name__}; {SUPPORTED}")


def _ints(v: Any) -> tuple:
    return tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else (int(v), int(v))


def _imgsz(obj: Any) -> int:
    args = obj.get("train_args") if isinstance(obj, dict) else None
    size = args.get("imgsz") if isinstance(args, dict) else None
    if isinstance(size, (list, tuple)) and size:
        size = max(size)
    return int(size) if isinstance(size, int) and not isinstance(size, bool) and 0 < size <= 16384 else 640
