"""Short-budget training recipes: the YOLOv5 recipe (SGD) against the new default (``--optimizer auto``).

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/recipe.py --work runs/bench-recipe
    OMP_NUM_THREADS=1 .venv/bin/python bench/recipe.py --work runs/bench-recipe --recipes new,new-close
    OMP_NUM_THREADS=1 .venv/bin/python bench/recipe.py --work runs/bench-v8 --model yolov8n --recipes defaults \
        --data rs/data.yaml --score-ultralytics runs/ultralytics/v8n

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
- ``defaults``: ``yoloslim train`` without a recipe flag: ``--optimizer auto`` and the model family's
  defaults (``--no-aug-epochs``: 10 for YOLOv8 / YOLO11, ultralytics' ``close_mosaic``, 0 for the others;
  ``--nominal-batch`` 0: a step on every batch on a short ``auto`` run). The recipe for ``--model yolov8n``.
- ``defaults-nb64``: ``defaults`` accumulating to a nominal batch of 64 (``--nominal-batch 64``), as
  ultralytics' trainer does whatever the run's length (150 steps here instead of 600).

``--score-ultralytics RUN`` adds a row for a run of ultralytics' own trainer (a folder with
``weights/last.pt`` and ``results.csv``, trained in its own environment on the same data, e.g. with
``--data``): ``last.pt`` is imported (``yoloslim import --from ultralytics``, nothing in the pickle is
run) and scored by the same scorer as our runs (``yoloslim val`` at ``--imgsz``), next to the figures
their trainer's validation wrote for its last epoch. ``--data`` trains and scores on an existing data
set (a data.yaml) instead of the synthetic one.

``--timing R`` measures what a recipe costs instead: each recipe trains ``--timing-epochs`` epochs
(validation included, as in a real run) R times, the recipes taking turns round after round, so that
load on the shared machine hits them alike; the table gives the median seconds per epoch and the ratio
to the first recipe (issue 12: the new recipe at no more than 1.5x the old one's time per epoch). Run
it alone on the machine.

A run already finished in ``<work>/<recipe>`` is read back instead of trained again. Results go to
``<work>/recipe.json`` and a Markdown table for docs/BENCHMARKS.md is printed with the command line.
Each run is about 30 epochs of YOLOv5n at 160 px: 8-30 minutes on one thread of the shared machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import yaml
from _common import Stopwatch, command_line, environment, md_table

from yoloslim.data.synth import synthesize
from yoloslim.device import set_threads
from yoloslim.engine.train import TrainConfig, train
from yoloslim.workflows.importer import import_checkpoint
from yoloslim.workflows.report import write_json
from yoloslim.workflows.val import val

RECIPES: dict[str, dict[str, Any]] = {
    "old": {"optimizer": "SGD"},
    "new": {"optimizer": "auto"},
    "new-close": {"optimizer": "auto", "close": True},
    "new-nb": {"optimizer": "auto", "step_every_batch": True},
    "new-nb-close": {"optimizer": "auto", "step_every_batch": True, "close": True},
    "defaults": {"optimizer": "auto", "family_defaults": True},
    "defaults-nb64": {"optimizer": "auto", "family_defaults": True, "nominal_batch": 64},
}
# an ultralytics results.csv's columns of the box metrics (its own validation)
ULTRALYTICS_MAP50, ULTRALYTICS_MAP = "metrics/mAP50(B)", "metrics/mAP50-95(B)"


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
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: OMP_NUM_THREADS)")
    ap.add_argument("--data", help="an existing data.yaml to train and score on (default: the synthetic set)")
    ap.add_argument("--timing", type=int, default=0, metavar="R",
                    help="instead of scoring: R alternating rounds timing each recipe's epochs")
    ap.add_argument("--timing-epochs", type=int, default=3, help="epochs per timed run")
    ap.add_argument("--score-ultralytics", metavar="RUN",
                    help="an ultralytics run folder (weights/last.pt, results.csv): import and score its last.pt")
    return ap.parse_args(argv)


def recipe_config(name: str, data: Path, args: argparse.Namespace, out: Path, epochs: int) -> TrainConfig:
    """The training ``name`` stands for (see the module's docstring), written to ``out``."""
    recipe = RECIPES[name]
    no_aug = None if recipe.get("family_defaults") else (args.close if recipe.get("close") else 0)
    nominal = recipe.get("nominal_batch", args.batch if recipe.get("step_every_batch") else TrainConfig.nominal_batch)
    return TrainConfig(data=str(data), model=args.model, epochs=epochs, batch=args.batch, imgsz=args.imgsz,
                       workers=args.workers, device="cpu", out=str(out), optimizer=recipe["optimizer"],
                       no_aug_epochs=no_aug, nominal_batch=nominal)


def run_recipe(name: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train one recipe (or read its finished run back); its last epoch's val metrics."""
    out = Path(args.work) / name
    summary = out / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    result = train(recipe_config(name, data, args, out, args.epochs))
    m = result.metrics
    resolved = yaml.safe_load((result.run_dir / "args.yaml").read_text())["config"]  # the family's defaults applied
    row = {"recipe": name, "model": args.model, "optimizer": RECIPES[name]["optimizer"], "epochs": args.epochs,
           "no_aug_epochs": resolved["no_aug_epochs"], "nominal_batch": resolved["nominal_batch"],
           "map50": round(m["map50"], 4), "map": round(m["map"], 4),
           "best_epoch": m.get("best_epoch"), "weights": str(result.last)}
    write_json(summary, row)
    return row


def time_recipes(names: list[str], data: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Wall seconds per epoch of each recipe: ``--timing`` rounds, the recipes in turn (the order rotating
    from round to round), each a fresh ``--timing-epochs`` run; medians, and ratios to the first recipe."""
    per_epoch: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.timing):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out = Path(args.work) / "timing" / name
            shutil.rmtree(out, ignore_errors=True)
            with Stopwatch() as sw:
                train(recipe_config(name, data, args, out, args.timing_epochs))
            per_epoch[name].append(sw.wall / args.timing_epochs)
    first = statistics.median(per_epoch[names[0]])
    return [{"recipe": n, "seconds_per_epoch": round(statistics.median(v), 3),
             "ratio": round(statistics.median(v) / first, 3), "runs": [round(t, 3) for t in v]}
            for n, v in per_epoch.items()]


def score_ultralytics(run: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Import an ultralytics run's ``weights/last.pt`` and score it as our runs are; their own figures too."""
    out = Path(args.work) / "ultralytics"
    imported = import_checkpoint("ultralytics", run / "weights" / "last.pt", out / "last.safetensors")
    scored = val(str(out / "last.safetensors"), str(data), imgsz=args.imgsz, device="cpu", workers=args.workers,
                 json_file=str(out / "val.json"))
    theirs = ultralytics_last_epoch(run / "results.csv")
    row = {"recipe": "ultralytics", "model": imported["model"], "optimizer": "auto", "epochs": theirs["epoch"],
           "map50": round(scored["map50"], 4), "map": round(scored["map"], 4),
           "their_map50": theirs["map50"], "their_map": theirs["map"], "weights": str(out / "last.safetensors"),
           "round_trip_max_diff": imported["round_trip_max_diff"]}
    write_json(out / "summary.json", row)
    return row


def ultralytics_last_epoch(results_csv: Path) -> dict[str, Any]:
    """The last row of an ultralytics ``results.csv``: its epoch and its own validation's mAP."""
    with open(results_csv, newline="") as f:
        rows = [{k.strip(): v.strip() for k, v in r.items()} for r in csv.DictReader(f)]
    if not rows:
        raise SystemExit(f"{results_csv}: no epochs")
    last = rows[-1]
    return {"epoch": int(last["epoch"]), "map50": round(float(last[ULTRALYTICS_MAP50]), 4),
            "map": round(float(last[ULTRALYTICS_MAP]), 4)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")
    if args.timing < 0 or args.timing_epochs < 1:
        raise SystemExit(f"--timing must be 0 or more and --timing-epochs at least 1, got {args.timing} and "
                         f"{args.timing_epochs}")
    if args.threads:
        set_threads(args.threads)
    work = Path(args.work)
    data = Path(args.data) if args.data else work / "data" / "data.yaml"
    if not data.is_file():
        data = synthesize(work / "data", fmt="yolo", images=args.images, imgsz=args.imgsz, seed=0, progress=False)
    if args.timing:
        timing = time_recipes(names, data, args)
        write_json(work / "timing.json", {"command": command_line(__file__, argv), "environment": environment(),
                                          "epochs": args.timing_epochs, "rows": timing})
        print(command_line(__file__, argv))
        print(md_table(["recipe", "s / epoch (median)", f"× {names[0]}", "runs"],
                       [[t["recipe"], f"{t['seconds_per_epoch']:.2f}", f"{t['ratio']:.2f}×",
                         ", ".join(f"{x:.2f}" for x in t["runs"])] for t in timing]))
        return
    rows = [run_recipe(n, data, args) for n in names]
    if args.score_ultralytics:
        rows.append(score_ultralytics(Path(args.score_ultralytics), data, args))
    write_json(work / "recipe.json", {"command": command_line(__file__, argv), "environment": environment(),
                                      "rows": rows})
    print(command_line(__file__, argv))
    print(md_table(["recipe", "model", "optimizer", "epochs", "mAP@.5", "mAP@.5:.95", "its own val (ultralytics)"],
                   [[r["recipe"], r.get("model", args.model), r["optimizer"], r["epochs"], r["map50"], r["map"],
                     f"{r['their_map50']} / {r['their_map']}" if "their_map" in r else ""] for r in rows]))


if __name__ == "__main__":
    main()
