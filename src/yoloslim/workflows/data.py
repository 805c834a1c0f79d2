"""The ``data`` workflows: generate the synthetic data set, convert VOC / COCO / labelme / Oxford Hand to
YOLO, check a data set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yoloslim.data.check import check_data, format_report
from yoloslim.data.convert import convert_coco, convert_labelme, convert_oxford_hand, convert_voc
from yoloslim.data.synth import synthesize
from yoloslim.errors import UserError
from yoloslim.models.io import check_writable
from yoloslim.workflows.report import table, write_json


def synth(out: str | Path, fmt: str = "yolo", images: int = 500, imgsz: int = 320, seed: int = 0,
          json_file: str | None = None) -> Path:
    """Write the synthetic data set and print where; returns the data.yaml (yolo) or the VOC root."""
    check_writable(out, "--out", folder=True)
    check_writable(json_file, "--json")
    path = synthesize(out, fmt=fmt, images=images, imgsz=imgsz, seed=seed)
    what = "data.yaml" if path.suffix == ".yaml" else f"{fmt} folder"
    print(f"wrote {images} synthetic images of {imgsz} px (seed {seed}), {what}: {path}")
    if json_file:
        write_json(json_file, {"path": str(path), "format": fmt, "images": images, "imgsz": imgsz,
                               "seed": seed})
    return path


def convert(voc: str | Path | None, out: str | Path, val_ratio: float | None = None, classes: str | None = None,
            seed: int = 0, keep_difficult: bool = False, json_file: str | None = None, coco: str | None = None,
            images: str | None = None, labelme: str | None = None, oxford_hand: str | None = None) -> Path:
    """Convert one of VOC, COCO json (+ ``images``), labelme or Oxford Hand to YOLO txt, print what was
    written; returns the data.yaml."""
    given = [k for k, v in {"--voc": voc, "--coco": coco, "--labelme": labelme, "--oxford-hand": oxford_hand}.items()
             if v]
    if len(given) != 1:
        raise UserError("give exactly one of --voc, --coco, --labelme or --oxford-hand")
    if images and not coco:
        raise UserError("--images is the image folder of a --coco file")
    check_writable(out, "--out", folder=True)
    check_writable(json_file, "--json")
    if coco:
        if not images:
            raise UserError("--coco needs --images DIR, the folder its file_name entries are relative to")
        res = convert_coco(coco, images, out, val_ratio=0.2 if val_ratio is None else val_ratio,
                           classes_file=classes, seed=seed, keep_difficult=keep_difficult)
    elif labelme:
        res = convert_labelme(labelme, out, val_ratio=0.2 if val_ratio is None else val_ratio,
                              classes_file=classes, seed=seed)
    elif oxford_hand:
        if val_ratio is not None or classes:
            raise UserError("--oxford-hand keeps the data set's own split and its one class (hand); "
                            "drop --val-ratio / --classes")
        res = convert_oxford_hand(oxford_hand, out)
    else:
        res = convert_voc(voc, out, val_ratio=val_ratio, classes_file=classes, seed=seed,
                          keep_difficult=keep_difficult)
    source = voc or coco or labelme or oxford_hand
    splits = list(res.images)
    print(table(["split", "images", "boxes"], [[s, res.images[s], res.boxes.get(s, 0)] for s in splits]))
    if res.difficult_dropped:
        print(f"{res.difficult_dropped} difficult/crowd object(s) left out (--keep-difficult keeps them)")
    if res.problems:
        hint = f"`yoloslim data check --data {voc}` lists them" if voc else "the warning above lists them"
        print(f"{res.problems} problem(s) in {source}: {hint}")
    print(f"{len(res.names)} classes: {', '.join(res.names)}")
    print(f"wrote {res.data_yaml}")
    if json_file:
        write_json(json_file, {"data_yaml": str(res.data_yaml), "images": res.images, "boxes": res.boxes,
                               "difficult_dropped": res.difficult_dropped, "problems": res.problems,
                               "names": res.names})
    return res.data_yaml


def check(data: str | Path, classes: str | None = None, json_file: str | None = None) -> dict[str, Any]:
    """Print a data set's statistics and problems; returns the summary (``ok`` False when problems exist)."""
    check_writable(json_file, "--json")
    report = check_data(data, names_file=classes)
    print(format_report(report))
    summary = {"ok": report.ok, **report.summary()}
    if json_file:
        write_json(json_file, summary)
    return summary
