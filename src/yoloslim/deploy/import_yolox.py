"""Import an official YOLOX checkpoint (Megvii ``.pth``) into a yoloslim model file.

yoloslim's YOLOX builder uses the official module names, so the official state dict loads as a
plain strict state dict: no renaming, no permutation. The file is read with
``torch.load(weights_only=True)``, so nothing in it can execute. The official models take BGR
pixels in 0..255 without normalisation; the imported spec says so (``input_bgr``, ``input_scale``)
and every yoloslim tool feeds it that way.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from yoloslim.errors import UserError
from yoloslim.log import logger
from yoloslim.models import build_model, model_spec
from yoloslim.models.io import ModelInfo, load_state_strict, save_model
from yoloslim.models.yolox import PRESETS

COCO_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
]

# test sizes of the official exps: nano and tiny are evaluated at 416, the others at 640
_IMGSZ = {"yolox-nano": 416, "yolox-tiny": 416}


def read_yolox_state(pth: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict of an official checkpoint (``{"model": state_dict, ...}`` or a bare one)."""
    pth = Path(pth)
    if not pth.is_file():
        raise UserError(f"{pth}: no such file")
    try:
        ckpt = torch.load(pth, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, OSError,
            zipfile.BadZipFile, KeyError, IndexError, TypeError) as e:
        raise UserError(f"{pth}: not a loadable weights-only torch checkpoint ({_why(e)})") from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    tensors_only = isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    if not state or not tensors_only:
        raise UserError(f"{pth}: expected an official YOLOX checkpoint {{'model': state_dict, ...}} "
                        "or a bare state dict of tensors")
    if all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    if "head.cls_preds.0.weight" not in state:
        raise UserError(f"{pth}: not a YOLOX state dict (no 'head.cls_preds.0.weight'); "
                        "use `--from yolov5` or `--from darknet` for other families")
    return dict(state)


def _why(e: Exception) -> str:
    """One line out of torch.load's long refusals: the global a pickle would call, else the first line."""
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    if found:
        return (f"the pickle calls {found.group(1)}, which could run code; nothing in the file was executed")
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else e.__class__.__name__


def infer_preset(state: dict[str, torch.Tensor]) -> str:
    """The preset whose stem width, CSP depth and depthwise flag a state dict has."""
    stem = state.get("backbone.backbone.stem.conv.conv.weight")
    if stem is None:
        raise UserError("not a YOLOX state dict (no 'backbone.backbone.stem.conv.conv.weight')")
    depthwise = "backbone.backbone.dark2.0.dconv.conv.weight" in state
    block = re.compile(r"backbone\.backbone\.dark3\.1\.m\.(\d+)\.")
    n3 = len({m.group(1) for k in state if (m := block.match(k))})
    for name, (depth, width, dw) in PRESETS.items():
        if int(width * 64) == stem.shape[0] and max(round(depth * 3), 1) * 3 == n3 and dw == depthwise:
            return name
    raise UserError(f"the checkpoint fits no YOLOX preset (stem width {stem.shape[0]}, {n3} blocks in dark3, "
                    f"depthwise {depthwise}); presets: {', '.join(PRESETS)}")


def load_yolox_checkpoint(src: str | Path, *, cfg: Path | None = None, model: str | None = None,
                          names: list[str] | None = None) -> tuple[nn.Module, ModelInfo]:
    """The importer of ``yoloslim import --from yolox``: the model and its info (empty history).

    Args:
        src: the official ``.pth`` checkpoint.
        cfg: not used (official exp files are Python and are never run); must be None.
        model: ``yolox-nano`` ... ``yolox-x`` (``yolox_s`` also accepted); None infers it from the
            tensor shapes.
        names: class names (COCO's when None and the checkpoint has 80 classes).
    """
    if cfg is not None:
        raise UserError("--cfg is not used with --from yolox: the preset comes from --model or the shapes")
    state = read_yolox_state(src)
    nc = int(state["head.cls_preds.0.weight"].shape[0])
    fitting = infer_preset(state)
    name = model.replace("_", "-").lower() if model else fitting
    if name not in PRESETS:
        raise UserError(f"--model {model!r} is not a YOLOX model; choose from {', '.join(PRESETS)}")
    if name != fitting:
        raise UserError(f"{src}: the checkpoint is a {fitting} (by its tensor shapes), not a {name}; "
                        f"use --model {fitting}")
    if names is None:
        names = list(COCO_NAMES) if nc == len(COCO_NAMES) else [f"class{i}" for i in range(nc)]
    if len(names) != nc:
        raise UserError(f"{len(names)} class names given but the checkpoint has {nc} classes")
    spec = model_spec(name, nc)
    net = build_model(spec)
    load_state_strict(net, state, source=str(src))
    return net.float(), ModelInfo(spec, list(names), _IMGSZ.get(name, 640))


def import_yolox(pth: str | Path, model_name: str | None, out: str | Path,
                 names: list[str] | None = None) -> Path:
    """Convert an official YOLOX ``.pth`` into a yoloslim ``.safetensors`` model file.

    Args:
        pth: the official checkpoint.
        model_name: ``yolox-nano`` ... ``yolox-x``; None infers it from the tensor shapes.
        out: the model file to write.
        names: class names (COCO's when None and the checkpoint has 80 classes).

    Returns:
        The path written.
    """
    net, info = load_yolox_checkpoint(pth, model=model_name, names=names)
    info = info.with_event("imported", source="yolox", file=Path(pth).name, input="BGR 0-255")
    path = save_model(out, net, info)
    logger.info(f"imported {info.spec.name} ({info.spec.nc} classes) from {pth} -> {path}")
    return path
