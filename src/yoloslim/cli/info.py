"""``yoloslim info``: architecture, per-layer channels, params and FLOPs."""

from __future__ import annotations

import argparse

from yoloslim.cli.options import add_threads


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="architecture, per-layer channels, params and FLOPs of a model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="a yoloslim model file (.safetensors)")
    src.add_argument("--model", help="a preset name, e.g. yolov5s")
    p.add_argument("--nc", type=int, default=80, help="classes, with --model (default 80)")
    p.add_argument("--imgsz", type=int, default=640, help="image size for FLOPs (default 640)")
    p.add_argument("--layers", action="store_true", help="print the per-layer table")
    p.add_argument("--json", dest="json_file", help="also write the summary as JSON")
    add_threads(p)
    p.set_defaults(func=lambda a: _run(a))


def _run(a: argparse.Namespace) -> int:
    from yoloslim.workflows.info import info

    info(weights=a.weights, model=a.model, nc=a.nc, imgsz=a.imgsz, layers=a.layers, json_file=a.json_file)
    return 0
