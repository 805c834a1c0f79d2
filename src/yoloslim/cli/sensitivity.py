"""``yoloslim sensitivity``: per-group pruning sensitivity (a table, JSON and a plot of the curves)."""

from __future__ import annotations

import argparse

from yoloslim.cli.options import add_device, add_threads


def add(sub: argparse._SubParsersAction) -> None:
    from yoloslim.workflows.sensitivity import RATIOS, SENSITIVITY_CALIB_IMAGES, VAL_IMAGES

    p = sub.add_parser("sensitivity", help="prune each channel group alone at a few ratios and score it: "
                                           "the curves prune --allocation sensitivity follows")
    p.add_argument("--weights", required=True, help="a yoloslim model file (.safetensors)")
    p.add_argument("--data", required=True,
                   help="data.yaml or VOC root: scored on its val split, recalibrated on its train split; or, "
                        "with --metric output, a folder of unlabelled images (both on its first images)")
    p.add_argument("--method", default="auto",
                   help="the channel importance choosing which channels go (as prune --method; default auto)")
    p.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS),
                   help=f"ratios to prune each group at (default {','.join(f'{r:g}' for r in RATIOS)})")
    p.add_argument("--metric", default="map", choices=["map", "output"],
                   help="map: mAP@.5:.95 of the val images (default); output: the faster proxy, the relative "
                        "output distance to the unpruned model")
    p.add_argument("--val-images", type=int, default=VAL_IMAGES,
                   help=f"score on the first N val images (default {VAL_IMAGES})")
    p.add_argument("--include", nargs="+", metavar="NAME",
                   help="measure only groups with a conv under these module-name prefixes")
    p.add_argument("--imgsz", type=int, default=None, help="image size (default: the file's)")
    p.add_argument("--batch", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--workers", type=int, default=2, help="data-loader workers (default 2)")
    p.add_argument("--calib-images", type=int, default=SENSITIVITY_CALIB_IMAGES, metavar="N",
                   help=f"recalibrate each cut model's batch norms on N train images (default "
                        f"{SENSITIVITY_CALIB_IMAGES})")
    p.add_argument("--no-calib", action="store_true", help="score the cut models without BN recalibration")
    add_device(p)
    add_threads(p)
    p.add_argument("--out", default="sensitivity",
                   help="folder for sensitivity.txt, sensitivity.json and sensitivity.png (default sensitivity)")
    p.add_argument("--json", dest="json_file", help="also write the curves as JSON to this file")
    p.set_defaults(func=lambda a: _run(a))


def _run(a: argparse.Namespace) -> int:
    from yoloslim.workflows.sensitivity import parse_ratios, sensitivity

    sensitivity(weights=a.weights, data=a.data, method=a.method, ratios=parse_ratios(a.ratios),
                val_images=a.val_images, metric=a.metric, out=a.out, json_file=a.json_file, include=a.include,
                imgsz=a.imgsz, batch=a.batch, workers=a.workers, calib_images=a.calib_images,
                no_calib=a.no_calib, device=a.device)
    return 0
