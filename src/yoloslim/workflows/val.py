"""``yoloslim val``: score a model file on a split of a data set (COCO mAP, P, R, per class, speed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from yoloslim.data.class_map import match_classes
from yoloslim.data.dataset import DetectionDataset, create_loader, load_data
from yoloslim.device import check_half, resolve_device
from yoloslim.engine.bootstrap import LEVEL, ImageMatches, difference, draw_maps, intervals
from yoloslim.engine.evaluate import EvalResult, evaluate
from yoloslim.errors import UserError
from yoloslim.log import logger
from yoloslim.models.head_classes import select_classes
from yoloslim.models.io import check_writable, load_model
from yoloslim.models.spec import check_imgsz
from yoloslim.viz.run_plots import write_val_plots
from yoloslim.workflows.report import table, write_json


def val(weights: str, data: str, imgsz: int | None = None, batch: int = 16, split: str = "val",
        conf: float = 0.001, iou: float = 0.6, max_det: int = 300, device: str | None = None, workers: int = 2,
        json_file: str | None = None, save_json: str | None = None, class_map: str | None = None,
        plots: str | None = None, half: bool = False, bootstrap: int = 0,
        against: str | None = None) -> dict[str, Any]:
    """Evaluate ``weights`` on ``split`` of ``data``; print the table, optionally write JSON files.

    Args:
        weights: a yoloslim model file.
        data: a data.yaml or a VOC root.
        imgsz: letterbox size; by default the model file's.
        batch: images per batch.
        split: ``"val"``, ``"test"`` or ``"train"``.
        conf: NMS confidence threshold.
        iou: NMS IoU threshold.
        max_det: detections per image.
        device: e.g. ``"cpu"`` or ``"cuda:0"`` (None: cuda when available, else cpu).
        workers: data loader processes.
        json_file: write the summary here.
        save_json: write ``predictions.json`` and ``ground_truth.json`` (COCO) into this folder.
        class_map: a YAML file mapping the data set's class names to the model's; without it classes
            are matched by name, and a data set with a subset of the model's classes is scored on
            those classes only (see :mod:`yoloslim.data.class_map`).
        plots: write the pictures (PR and F1 curves, confusion matrix, validation images with ground
            truth and predictions) into this folder; see :func:`yoloslim.viz.run_plots.write_val_plots`.
        half: run the model in float16 (CUDA only).
        bootstrap: draw the images again this many times (with replacement) for the 95 % intervals of
            mAP@.5 and mAP@.5:.95 (see :mod:`yoloslim.engine.bootstrap`); 0: none.
        against: also score this model file on the same images and report the difference (this model's
            mAP minus that one's), with its paired interval when ``bootstrap`` is given.

    Returns:
        The summary written by ``json_file``: map50, map, precision, recall, per_class, speed_ms, ...
    """
    if not Path(weights).is_file():
        raise UserError(f"{weights}: no such model file")
    if not 0 <= conf <= 1 or not 0 <= iou <= 1:
        raise UserError(f"--conf and --iou must be between 0 and 1, got {conf} and {iou}")
    if batch < 1 or max_det < 1:
        raise UserError(f"--batch and --max-det must be at least 1, got {batch} and {max_det}")
    if bootstrap < 0:
        raise UserError(f"--bootstrap must be 0 (none) or a number of draws, got {bootstrap}")
    if against is not None and not Path(against).is_file():
        raise UserError(f"--against {against}: no such model file")
    device = resolve_device(device)
    check_half(half, device)
    check_writable(json_file, "--json")
    check_writable(save_json, "--save-json", folder=True)
    model, info = load_model(weights, device=device)
    if half:
        model.half()
    source = load_data(data)
    if split not in source.splits or not source.splits[split]:
        have = ", ".join(k for k, v in source.splits.items() if v) or "none"
        raise UserError(f"{data}: no {split!r} split with images (splits with images: {have})")
    samples = source.splits[split]
    if not any(len(s.classes) for s in samples):
        raise UserError(f"{data}: the {split} split has no labelled objects; there is nothing to score")
    imgsz = int(imgsz or info.imgsz)
    check_imgsz(imgsz, model.spec)
    match = match_classes(info.names, source.names, class_map, nc=model.spec.nc)
    if not match.identity:
        logger.info(f"scoring {match.describe()}")
        model = select_classes(model, match.ids)
    loader = create_loader(DetectionDataset(samples, imgsz), batch_size=batch, shuffle=False, workers=workers)
    res = evaluate(model, loader, source.names, conf=conf, iou=iou, max_det=max_det, device=device,
                   save_json_dir=save_json)
    print(format_table(res))
    sp = res.speed_ms
    print(f"Speed: {sp['preprocess']:.1f} ms pre-process, {sp['inference']:.1f} ms inference, "
          f"{sp['nms']:.1f} ms NMS per image at batch {batch}, {imgsz}x{imgsz}, {device}")
    m = res.metrics

    def score_other(path: str) -> EvalResult:  # --against: the same images, classes and settings
        other, other_info = load_model(path, device=device)
        check_imgsz(imgsz, other.spec)
        other_match = match_classes(other_info.names, source.names, class_map, nc=other.spec.nc)
        if not other_match.identity:
            other = select_classes(other, other_match.ids)
        logger.info(f"scoring {path} on the same images")
        return evaluate(other.half() if half else other, loader, source.names, conf=conf, iou=iou, max_det=max_det,
                        device=device)

    compared = _compare(res, against, score_other, bootstrap)
    summary = {
        "map50": m.map50, "map": m.map, "precision": m.precision, "recall": m.recall,
        "per_class": m.per_class, "speed_ms": res.speed_ms, "images": m.images, "instances": m.instances,
        "weights": str(weights), "data": str(data), "split": split, "imgsz": imgsz, "conf": conf, "iou": iou,
        "max_det": max_det, "classes": {"matched_by": match.how, "model_ids": match.ids, "renamed": match.renamed},
        **compared,
    }
    if plots:
        drawn = write_val_plots(plots, res, samples)
        print(f"Pictures: {', '.join(sorted(drawn))} in {plots}")
    if save_json:
        print(f"COCO files: {Path(save_json) / 'predictions.json'}, {Path(save_json) / 'ground_truth.json'}")
    if json_file:
        write_json(json_file, summary)
    return summary


def _compare(res: EvalResult, against: str | None, score_other: Callable[[str], EvalResult], rounds: int,
             ) -> dict[str, Any]:
    """``--bootstrap`` and ``--against``: print and return the intervals of the mAPs and the difference."""
    out: dict[str, Any] = {}
    ref_res = score_other(against) if against is not None else None
    if rounds:  # both models on the same draws
        models = {"this": ImageMatches.from_metrics(res.detections)}
        if ref_res is not None:
            models["against"] = ImageMatches.from_metrics(ref_res.detections)
        drawn = draw_maps(models, rounds)
        ci = intervals(*drawn["this"])
        out["bootstrap"] = {k: v.to_dict() for k, v in ci.items()}
        print(f"{LEVEL * 100:g} % intervals over {rounds} draws of the {res.metrics.images} images (bootstrap): "
              f"mAP50 [{ci['map50'].low:.3f}, {ci['map50'].high:.3f}], "
              f"mAP50-95 [{ci['map'].low:.3f}, {ci['map'].high:.3f}]")
    if ref_res is None:
        return out
    m, ref = res.metrics, ref_res.metrics
    diff = {"map50": (m.map50 - ref.map50) * 100, "map": (m.map - ref.map) * 100}
    out["against"] = {"weights": str(against), "map50": ref.map50, "map": ref.map,
                      "delta_points": {k: round(v, 3) for k, v in diff.items()}}
    line = (f"Against {against} (mAP50 {ref.map50:.3f}, mAP50-95 {ref.map:.3f}): "
            f"Δ mAP50 {diff['map50']:+.1f} points, Δ mAP50-95 {diff['map']:+.1f} points")
    if rounds:
        paired = difference(drawn, "against", "this")
        out["against"]["bootstrap"] = {k: v.to_dict(100, 3) for k, v in paired.items()}
        line += (f"; paired {LEVEL * 100:g} % intervals: [{paired['map50'].low * 100:+.1f}, "
                 f"{paired['map50'].high * 100:+.1f}] and [{paired['map'].low * 100:+.1f}, "
                 f"{paired['map'].high * 100:+.1f}]")
    print(line)
    return out


def format_table(res: EvalResult) -> str:
    """YOLOv5's validation table: one line for all classes, then one per class."""
    m = res.metrics

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    rows = [["all", m.images, m.instances, f(m.precision), f(m.recall), f(m.map50), f(m.map)]]
    for name, c in m.per_class.items():
        rows.append([name, c["n_img"], c["n_gt"], f(c["p"]), f(c["r"]), f(c["ap50"]), f(c["ap"])])
    return table(["Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95"], rows)
