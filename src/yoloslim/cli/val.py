"""``yoloslim val``: COCO mAP@.5 and mAP@.5:.95, P, R per class, and the speed per image."""

from __future__ import annotations

import argparse

from yoloslim.cli.options import add_device, add_threads


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("val", help="score a model on a data set: P, R, mAP@.5, mAP@.5:.95, per class, speed")
    p.add_argument("--weights", required=True, help="a yoloslim model file (.safetensors)")
    p.add_argument("--data", required=True, help="a data.yaml or a VOC root")
    p.add_argument("--imgsz", type=int, default=None, help="image size (default: the model file's)")
    p.add_argument("--batch", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--split", default="val", choices=["val", "test", "train"],
                   help="split to score (default val)")
    p.add_argument("--conf", type=float, default=0.001, help="NMS confidence threshold (default 0.001)")
    p.add_argument("--iou", type=float, default=0.6, help="NMS IoU threshold (default 0.6)")
    p.add_argument("--max-det", type=int, default=300, help="detections per image (default 300)")
    add_device(p, half=True)
    add_threads(p)
    p.add_argument("--workers", type=int, default=2, help="data loader processes (default 2)")
    p.add_argument("--json", dest="json_file", help="also write the metrics as JSON")
    p.add_argument("--save-json", metavar="DIR",
                   help="write predictions.json and ground_truth.json (COCO format) into DIR")
    p.add_argument("--class-map", metavar="FILE",
                   help="YAML 'data set name: model name' lines, for classes the model calls otherwise "
                        "(default: match by name; a subset of the model's classes is scored alone)")
    p.add_argument("--plots", metavar="DIR",
                   help="write PR_curve.png, F1_curve.png, confusion_matrix.png and validation images "
                        "(ground truth / predictions) into DIR")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="95 %% intervals of mAP@.5 and mAP@.5:.95 over N draws of the images with replacement "
                        "(e.g. 1000; default 0: none)")
    p.add_argument("--against", metavar="MODEL",
                   help="also score this model file on the same images and print the difference (e.g. the "
                        "unpruned model); with --bootstrap, its paired interval")
    p.set_defaults(func=lambda a: _run(a))


def _run(a: argparse.Namespace) -> int:
    from yoloslim.workflows.val import val

    val(weights=a.weights, data=a.data, imgsz=a.imgsz, batch=a.batch, split=a.split, conf=a.conf, iou=a.iou,
        max_det=a.max_det, device=a.device, workers=a.workers, json_file=a.json_file, save_json=a.save_json,
        class_map=a.class_map, plots=a.plots, half=a.half,
        bootstrap=a.bootstrap, against=a.against)
    return 0
