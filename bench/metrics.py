"""mAP computation: yoloslim's DetectionMetrics vs pycocotools (and faster-coco-eval if installed).

Generates a synthetic evaluation (default 5,000 images × 10 ground-truth boxes × 50 detections,
80 classes, 5 % crowd boxes, scores with ties), times each implementation on it, checks that
mAP@.5:.95 and mAP@.5 agree to 1e-4 and prints the speed ratios.

    .venv/bin/python bench/metrics.py [--images 5000] [--gt 10] [--dets 50] [--classes 80]
                                      [--repeat 3] [--json FILE]

Timed work: yoloslim from numpy arrays (``add`` every image, then ``compute``); pycocotools and
faster-coco-eval from their COCO objects (``evaluate`` + ``accumulate`` + ``summarize``), with the
JSON loading (``COCO`` + ``loadRes``) reported separately. Medians over ``--repeat`` runs
(pycocotools, being slow, runs once unless ``--repeat-coco`` says otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from yoloslim.engine.metrics import DetectionMetrics


def make_data(images: int, gt: int, dets: int, nc: int, seed: int) -> list[tuple[np.ndarray, ...]]:
    """Per image: gt boxes (xyxy), classes, crowd flags, det boxes, scores, classes."""
    rng = np.random.default_rng(seed)
    data = []
    for _ in range(images):
        xy = rng.uniform(0, 560, (gt, 2))
        gb = np.concatenate((xy, xy + rng.uniform(8, 200, (gt, 2))), 1)
        gc = rng.integers(0, nc, gt)
        crowd = rng.random(gt) < 0.05
        near = rng.random(dets) < 0.7  # most detections near a ground truth, the rest anywhere
        src = rng.integers(0, gt, dets)
        size = gb[src, 2:] - gb[src, :2]
        db = gb[src] + rng.normal(0, 0.08, (dets, 4)) * np.concatenate((size, size), 1)
        anywhere = rng.uniform(0, 560, (dets, 2))
        db[~near] = np.concatenate((anywhere, anywhere + rng.uniform(8, 200, (dets, 2))), 1)[~near]
        dc = np.where(near & (rng.random(dets) < 0.9), gc[src], rng.integers(0, nc, dets))
        scores = np.round(rng.random(dets) * np.where(near, 1.0, 0.6), 3)  # ties at 3 decimals
        data.append((gb, gc, crowd, db, scores, dc))
    return data


def run_ours(data: list[tuple[np.ndarray, ...]], nc: int) -> tuple[float, DetectionMetrics, Any]:
    t = time.perf_counter()
    m = DetectionMetrics([f"class{k}" for k in range(nc)])
    for i, (gb, gc, crowd, db, scores, dc) in enumerate(data):
        m.add(i, gb, gc, crowd, db, scores, dc, width=640, height=640)
    res = m.compute()
    return time.perf_counter() - t, m, res


def run_cocoapi(module: str, pred: Path, gt: Path) -> tuple[float, float, np.ndarray]:
    """(load seconds, evaluate seconds, stats) with pycocotools or faster_coco_eval."""
    if module == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        coco_gt = COCO(str(gt))
        coco_dt = coco_gt.loadRes(str(pred))
        t1 = time.perf_counter()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, np.asarray(ev.stats)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--gt", type=int, default=10, help="ground-truth boxes per image")
    ap.add_argument("--dets", type=int, default=50, help="detections per image")
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="runs of the fast implementations (median)")
    ap.add_argument("--repeat-coco", type=int, default=1, help="runs of pycocotools (median)")
    ap.add_argument("--json", dest="json_file", help="write the results as JSON")
    a = ap.parse_args(argv)

    data = make_data(a.images, a.gt, a.dets, a.classes, a.seed)
    print(f"data: {a.images} images x {a.gt} gt x {a.dets} detections, {a.classes} classes")
    ours = [run_ours(data, a.classes) for _ in range(a.repeat)]
    t_ours = statistics.median(r[0] for r in ours)
    m, res = ours[0][1], ours[0][2]
    results: dict[str, Any] = {"images": a.images, "gt_per_image": a.gt, "dets_per_image": a.dets,
                               "classes": a.classes, "yoloslim": {"seconds": t_ours, "map": res.map,
                                                                  "map50": res.map50}}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        pred, gt = m.write_coco(tmp)
        impls = ["pycocotools"]
        try:
            import faster_coco_eval  # noqa: F401
            impls.append("faster_coco_eval")
        except ImportError:
            print("faster-coco-eval is not installed: skipped (pip install faster-coco-eval to compare)")
        for name in impls:
            n = a.repeat_coco if name == "pycocotools" else a.repeat
            runs = [run_cocoapi(name, pred, gt) for _ in range(n)]
            load, t = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
            stats = runs[0][2]
            same = abs(stats[0] - res.map) < 1e-4 and abs(stats[1] - res.map50) < 1e-4
            ok &= bool(same)
            results[name] = {"seconds": t, "load_seconds": load, "map": float(stats[0]),
                             "map50": float(stats[1]), "same_as_yoloslim": bool(same)}
    print(f"{'implementation':<18}{'seconds':>10}{'(+ load)':>10}{'mAP50-95':>11}{'mAP50':>9}"
          f"{'time / ours':>13}")
    for name in ["yoloslim", "pycocotools", "faster_coco_eval"]:
        if name in results:
            r = results[name]
            load = f"{r['load_seconds']:.2f}" if "load_seconds" in r else "-"
            print(f"{name:<18}{r['seconds']:>10.2f}{load:>10}{r['map']:>11.5f}{r['map50']:>9.5f}"
                  f"{r['seconds'] / t_ours:>12.1f}x")
    print("stats agree to 1e-4:", "yes" if ok else "NO")
    results["agree"] = ok
    if a.json_file:
        Path(a.json_file).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
