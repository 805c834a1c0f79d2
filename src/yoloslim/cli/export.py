"""``yoloslim export``: fused, decoded ONNX file, checked in ONNX Runtime against PyTorch."""

from __future__ import annotations

import argparse

from yoloslim.cli.options import add_threads
from yoloslim.device import DEVICE_HELP


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX (fused, decoded, checked against PyTorch)")
    p.add_argument("--weights", required=True, help="a yoloslim model file (.safetensors)")
    p.add_argument("--format", default="onnx",
                   help="export format: onnx, or darknet (.cfg + .weights, YOLOv3 family)")
    p.add_argument("--imgsz", type=int, default=None, help="input size (default: the model file's)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    p.add_argument("--nms", action="store_true",
                   help="append ONNX NonMaxSuppression: first output (K, 7) batch,x1,y1,x2,y2,score,class")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or newer (default 17)")
    p.add_argument("--conf", type=float, default=0.25, help="with --nms: score threshold (default 0.25)")
    p.add_argument("--iou", type=float, default=0.45, help="with --nms: IoU threshold (default 0.45)")
    p.add_argument("--max-det", type=int, default=300, help="with --nms: boxes per class+image (300)")
    p.add_argument("--layout", default="yoloslim",
                   help="output tensor: yoloslim (batch, N, 5+nc) rows, or ultralytics (batch, 4+nc, N) as their "
                        "ONNX export writes it, RGB 0..1 input (default yoloslim)")
    p.add_argument("--half", action="store_true",
                   help="float16 weights and computation, float32 input and output (for GPUs, TensorRT, "
                        "Jetson); checked against the float32 model at float16 tolerance")
    p.add_argument("--device", default=None,
                   help=f"where the model is traced (default cpu; the file is the same): {DEVICE_HELP}")
    add_threads(p)
    p.add_argument("--out", help="the .onnx file (default: <weights name>.onnx next to the weights)")
    p.add_argument("--json", dest="json_file", help="also write the summary as JSON")
    p.set_defaults(func=lambda a: _run(a))


def _run(a: argparse.Namespace) -> int:
    from yoloslim.workflows.export import export

    export(weights=a.weights, format=a.format, imgsz=a.imgsz, dynamic=a.dynamic, nms=a.nms, opset=a.opset,
           out=a.out, conf=a.conf, iou=a.iou, max_det=a.max_det, json_file=a.json_file, half=a.half,
           device=a.device, layout=a.layout)
    return 0
