"""``yoloslim predict``: detect objects in an image, a folder, a video file or a camera stream."""

from __future__ import annotations

import argparse

from yoloslim.cli.options import add_device, add_threads


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="detect objects in images, videos or a camera")
    p.add_argument("--weights", help="a yoloslim model file (.safetensors); optional with --onnx")
    p.add_argument("--source", required=True, help="image, folder of images, video or camera id (0, 1)")
    p.add_argument("--imgsz", type=int, default=None, help="input size (default: the model file's)")
    p.add_argument("--conf", type=float, default=0.25, help="minimum score of a detection (default 0.25)")
    p.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    p.add_argument("--max-det", type=int, default=300, help="detections kept per image (default 300)")
    p.add_argument("--fuse", action="store_true", help="fold Conv+BN first (same detections, faster)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"], help="default torch")
    p.add_argument("--onnx", help="exported file for --backend onnxruntime (default: <weights name>.onnx)")
    add_threads(p)
    add_device(p, half=True)
    p.add_argument("--save-txt", action="store_true", help="also write YOLO txt: cls cx cy w h conf")
    p.add_argument("--out", help="output folder (default: a new runs/predict/expN)")
    p.add_argument("--json", dest="json_file", help="also write the detections as JSON")
    p.set_defaults(func=lambda a: _run(a))


def _run(a: argparse.Namespace) -> int:
    from yoloslim.workflows.predict import predict

    predict(source=a.source, weights=a.weights, imgsz=a.imgsz, conf=a.conf, iou=a.iou, max_det=a.max_det,
            fuse=a.fuse, backend=a.backend, onnx=a.onnx, save_txt=a.save_txt, out=a.out, threads=a.threads,
            json_file=a.json_file, device=a.device, half=a.half)
    return 0
