"""``yoloslim data synth|convert|check``: make, convert and check detection data sets."""

from __future__ import annotations

import argparse

# yoloslim.data.synth.FORMATS, spelled here so that building the parser imports no image code
SYNTH_FORMATS = ("yolo", "voc", "coco", "labelme", "oxford-hand")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="make (synth), convert (VOC, COCO, labelme, Oxford Hand -> YOLO) and check "
                                    "detection data sets",
                       description="Make, convert and check detection data sets.")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    s = dsub.add_parser("synth", help="write the built-in synthetic data set (8 shape and letter classes)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--format", dest="fmt", choices=SYNTH_FORMATS, default="yolo",
                   help="layout (default yolo)")
    s.add_argument("--images", type=int, default=500, help="number of images (default 500)")
    s.add_argument("--imgsz", type=int, default=320, help="image side in pixels (default 320)")
    s.add_argument("--seed", type=int, default=0, help="seed: the same seed gives the same files (default 0)")
    s.add_argument("--json", dest="json_file", help="also write a summary as JSON")
    s.set_defaults(func=_synth)

    c = dsub.add_parser("convert", help="VOC, COCO json, labelme or Oxford Hand -> YOLO txt with a train/val "
                                        "split and a data.yaml")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--voc", help="VOC root (Annotations/, JPEGImages/) or a VOCdevkit folder")
    src.add_argument("--coco", metavar="FILE", help="a COCO instances json (with --images DIR)")
    src.add_argument("--labelme", metavar="DIR", help="a folder of labelme .json files and their images")
    src.add_argument("--oxford-hand", metavar="ROOT",
                     help="the Oxford Hand data set (hand_dataset/); keeps its train/val/test split")
    c.add_argument("--images", metavar="DIR", help="--coco: the folder its file_names are relative to")
    c.add_argument("--out", required=True, help="new output folder for images/, labels/ and data.yaml")
    c.add_argument("--val-ratio", type=float, default=None,
                   help="share of images in val, split with --seed (default: VOC's ImageSets/Main when "
                        "present, else 0.2)")
    c.add_argument("--classes", help="class names, one per line (default classes.txt in the root, else all "
                                     "names found, sorted)")
    c.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    c.add_argument("--keep-difficult", action="store_true",
                   help="also write objects marked difficult (COCO: iscrowd) (left out by default)")
    c.add_argument("--json", dest="json_file", help="also write a summary as JSON")
    c.set_defaults(func=_convert)

    k = dsub.add_parser("check", help="images and boxes per class and split, box sizes, every problem found")
    k.add_argument("--data", required=True, help="a data.yaml or a VOC root")
    k.add_argument("--classes", help="class names file, for a VOC root")
    k.add_argument("--json", dest="json_file", help="also write the statistics and problems as JSON")
    k.set_defaults(func=_check)


def _synth(a: argparse.Namespace) -> int:
    from yoloslim.workflows.data import synth

    synth(out=a.out, fmt=a.fmt, images=a.images, imgsz=a.imgsz, seed=a.seed, json_file=a.json_file)
    return 0


def _convert(a: argparse.Namespace) -> int:
    from yoloslim.workflows.data import convert

    convert(voc=a.voc, out=a.out, val_ratio=a.val_ratio, classes=a.classes, seed=a.seed,
            keep_difficult=a.keep_difficult, json_file=a.json_file, coco=a.coco, images=a.images,
            labelme=a.labelme, oxford_hand=a.oxford_hand)
    return 0


def _check(a: argparse.Namespace) -> int:
    from yoloslim.workflows.data import check

    return 0 if check(data=a.data, classes=a.classes, json_file=a.json_file)["ok"] else 1
