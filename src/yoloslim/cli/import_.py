"""``yoloslim import``: read another project's checkpoint into a yoloslim model file."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="import a YOLOv5 / YOLOv8 / YOLO11 / darknet / YOLOX checkpoint as a "
                                            "yoloslim model file")
    p.add_argument("--from", dest="source", required=True, metavar="FORMAT",
                   help="the source project: yolov5 (the YOLOv5 repo's .pt), ultralytics (YOLOv8 / YOLO11 .pt "
                        "of the ultralytics package), darknet (.cfg + .weights), yolox (.pth)")
    p.add_argument("src", help="the checkpoint to import")
    p.add_argument("--out", required=True, help="the yoloslim model file to write (.safetensors)")
    p.add_argument("--cfg", help="the source's architecture file (a YOLOv5 model yaml for a bare state dict, "
                                 "a darknet .cfg)")
    p.add_argument("--model", help="the yoloslim preset the checkpoint is, when the file does not say "
                                   "(e.g. yolox-s)")
    p.add_argument("--names", help="class names: a text file (one a line) or a data.yaml with names:")
    p.add_argument("--json", dest="json_file", help="also write the summary as JSON")
    p.set_defaults(func=lambda a: _run(a))


def _run(a: argparse.Namespace) -> int:
    from yoloslim.workflows.importer import import_checkpoint

    import_checkpoint(source=a.source, src=a.src, out=a.out, cfg=a.cfg, model=a.model, names=a.names,
                      json_file=a.json_file)
    return 0
