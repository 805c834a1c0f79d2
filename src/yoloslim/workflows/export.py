"""``yoloslim export``: a model file to a checked ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yoloslim.deploy.onnx_export import MIN_OPSET, export_checked
from yoloslim.device import resolve_device
from yoloslim.errors import UserError
from yoloslim.models.io import check_writable, load_model
from yoloslim.models.profile import count_params
from yoloslim.workflows.export_darknet import export_darknet_files
from yoloslim.workflows.report import write_json

FORMATS = ("onnx", "darknet")


def export(weights: str, format: str = "onnx", imgsz: int | None = None, dynamic: bool = False,
           nms: bool = False, opset: int = MIN_OPSET, out: str | None = None, conf: float = 0.25,
           iou: float = 0.45, max_det: int = 300, json_file: str | None = None, half: bool = False,
           device: str | None = None, layout: str = "yoloslim") -> dict[str, Any]:
    """Export ``weights`` (fused, decoded) and check the file against PyTorch in ONNX Runtime.

    Args:
        weights: a yoloslim model file.
        format: ``"onnx"``, or ``"darknet"`` (YOLOv3 family, see :mod:`yoloslim.workflows.export_darknet`).
        imgsz: input size; by default the size stored in the model file.
        dynamic: symbolic batch, height and width.
        nms: append ONNX NonMaxSuppression (outputs final detections first).
        opset: ONNX opset (17 or newer).
        out: the file to write; by default ``<weights stem>.onnx`` next to the weights.
        conf: with ``nms``, score threshold stored in the file.
        iou: with ``nms``, IoU threshold stored in the file.
        max_det: with ``nms``, boxes kept per class and image.
        json_file: also write the summary as JSON.
        half: float16 weights and computation (ONNX; float32 input and output).
        device: where the model is traced (``--device``; the file does not depend on it).
        layout: ``"yoloslim"`` or ``"ultralytics"`` (the output tensor of ultralytics' own ONNX export; see
            :mod:`yoloslim.deploy.onnx_export`).

    Returns:
        The summary: file, size, parity difference, params.
    """
    if format not in FORMATS:
        raise UserError(f"unknown --format {format!r}; choose from {', '.join(FORMATS)}")
    dev = resolve_device(device or "cpu")
    if format == "darknet":  # .cfg + .weights of a YOLOv3-family model (workflows/export_darknet.py)
        if half:
            raise UserError("--half is for ONNX files; darknet .weights hold float32")
        if layout != "yoloslim":
            raise UserError("--layout is for --format onnx")
        return export_darknet_files(weights, out=out, imgsz=imgsz, dynamic=dynamic, nms=nms,
                                    json_file=json_file)
    target = Path(out) if out else Path(weights).with_suffix(".onnx")
    if target.suffix.lower() != ".onnx":
        raise UserError(f"--out must end in .onnx, got {target}")
    check_writable(target, "--out")
    check_writable(json_file, "--json")
    model, info = load_model(weights)
    imgsz = int(imgsz or info.imgsz)
    path, check = export_checked(model, info, target, imgsz, dynamic=dynamic, nms=nms, opset=opset,
                                 conf=conf, iou=iou, max_det=max_det, half=half, device=dev, layout=layout)
    summary = {
        "file": str(path), "format": format, "bytes": path.stat().st_size, "imgsz": imgsz, "dynamic": dynamic,
        "nms": nms, "layout": layout, "opset": opset, "precision": "float16" if half else "float32",
        "params": count_params(model), "family": model.spec.family,
        "max_diff": check.max_diff if check else None, "checked": sorted(check.diffs) if check else [],
    }
    shape = f"{'dynamic' if dynamic else f'{imgsz}x{imgsz}'}{', with NMS' if nms else ''}"
    print(f"exported {path} ({summary['bytes'] / 1e6:.1f} MB, opset {opset}, {summary['precision']}, {shape}"
          f"{', ultralytics layout' if layout != 'yoloslim' else ''}); "
          f"ONNX Runtime vs PyTorch: max difference {summary['max_diff']:.2e}")
    if json_file:
        write_json(json_file, summary)
    return summary
