"""Short-budget training recipes: the YOLOv5 recipe (SGD) against the new default (``--optimizer auto``).

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/recipe.py --work runs/bench-recipe
    OMP_NUM_THREADS=1 .venv/bin/python bench/recipe.py --work runs/bench-recipe --recipes new,new-close

On the built-in synthetic data set (``yoloslim data synth --out <work>/data --images 400 --imgsz 160``:
320 train + 80 val images, 8 classes; written once and reused), trains one model (``--model``,
default yolov5n) from scratch with each recipe for the same ``--epochs`` (30), ``--batch`` (16, with
the usual accumulation to a nominal 64) and ``--imgsz`` (160), and scores the EMA weights of the last
epoch (never the best: the val split that reports mAP does not also pick checkpoints) on the val
split, as ``yoloslim val --imgsz 160`` does. Recipes:

- ``old``: ``--optimizer SGD`` with the default hyp: YOLOv5's hyp.scratch-low (lr0 0.01, momentum
  0.937, 3 warm-up epochs, bias warm-up from 0.1), what ``train`` did before ``--optimizer``;
- ``new``: ``--optimizer auto`` (here AdamW, lr 0.002·5/(4 + 8) = 0.000833, β1 0.9: 150 steps);
- ``new-close``: ``new`` with mosaic and affine augmentation off for the last ``--close`` epochs
  (10, as ultralytics' ``close_mosaic``);
- ``new-nb``: ``new`` with an optimizer step on every batch (nominal batch = ``--batch``: 600 steps
  instead of 150);
- ``new-nb-close``: both.

A run already finished in ``<work>/<recipe>`` is read back instead of trained again. Results go to
``<work>/recipe.json`` and a Markdown table for docs/BENCHMARKS.md is printed with the command line.
Each run is about 30 epochs of YOLOv5n at 160 px: 8-30 minutes on one thread of the shared machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _common import command_line, environment, md_table

from yoloslim.data.synth import synthesize
from yoloslim.engine.train import TrainConfig, train
from yoloslim.workflows.report import write_json

RECIPES: dict[str, dict[str, Any]] = {
    "old": {"optimizer": "SGD"},
    "new": {"optimizer": "auto"},
    "new-close": {"optimizer": "auto", "close": True},
    "new-nb": {"optimizer": "auto", "step_every_batch": True},
    "new-nb-close": {"optimizer": "auto", "step_every_batch": True, "close": True},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="work folder (data, runs, recipe.json)")
    ap.add_argument("--recipes", default="old,new", help=f"comma-separated, of {', '.join(RECIPES)}")
    ap.add_argument("--model", default="yolov5n")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--close", type=int, default=10, help="no-augmentation epochs of new-close")
    ap.add_argument("--workers", type=int, default=2)
    return ap.parse_args(argv)


def run_recipe(name: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train one recipe (or read its finished run back); its last epoch's val metrics."""
    out = Path(args.work) / name
    summary = out / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    recipe = RECIPES[name]
    cfg = TrainConfig(data=str(data), model=args.model, epochs=args.epochs, batch=args.batch, imgsz=args.imgsz,
                      workers=args.workers, device="cpu", out=str(out), optimizer=recipe["optimizer"],
                      no_aug_epochs=args.close if recipe.get("close") else 0,
                      nominal_batch=args.batch if recipe.get("step_every_batch") else TrainConfig.nominal_batch)
    result = train(cfg)
    m = result.metrics
    row = {"recipe": name, "optimizer": recipe["optimizer"], "epochs": args.epochs,
           "no_aug_epochs": cfg.no_aug_epochs, "nominal_batch": cfg.nominal_batch,
           "map50": round(m["map50"], 4), "map": round(m["map"], 4),
           "best_epoch": m.get("best_epoch"), "weights": str(result.last)}
    write_json(summary, row)
    return row


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")
    work = Path(args.work)
    data = work / "data" / "data.yaml"
    if not data.is_file():
        data = synthesize(work / "data", fmt="yolo", images=args.images, imgsz=args.imgsz, seed=0, progress=False)
    rows = [run_recipe(n, data, args) for n in names]
    write_json(work / "recipe.json", {"command": command_line(__file__, argv), "environment": environment(),
                                      "rows": rows})
    print(command_line(__file__, argv))
    print(md_table(["recipe", "optimizer", "epochs", "mAP@.5", "mAP@.5:.95"],
                   [[r["recipe"], r["optimizer"], r["epochs"], r["map50"], r["map"]] for r in rows]))


if __name__ == "__main__":
    main()
