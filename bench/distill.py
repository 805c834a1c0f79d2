"""Distillation benchmark: which ``--distill-weight`` recovers a pruned model best, and by how much.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/distill.py --work /tmp/distill-bench

On the built-in synthetic data set (``--images`` at ``--imgsz``, written to ``<work>/data``):

1. ``teacher``: ``--model`` trained from scratch for ``--epochs`` E;
2. ``pruned``: the teacher pruned with ``--method`` l1 to ``--target-flops`` of its FLOPs;
3. ``finetune``: the pruned model fine-tuned F (``--finetune-epochs``) epochs on the labels, at every
   ``--weights`` value (0: without a teacher); the same seed, data order and schedule in every run;
4. ``label-free`` (unless ``--no-label-free``): the pruned model trained F epochs on the train images
   alone (a folder without labels), by distillation alone at the default weight;
5. every finished run's mAP on the labelled val split (the EMA weights of the last epoch).

Batches are not accumulated (``nominal_batch`` = ``--batch``) and there is no warm-up (``--hyp``), so
that the short runs take enough optimiser steps: with the default recipe (accumulation to 64 images,
at least 100 warm-up iterations) the 30-epoch teacher reached mAP@.5 0.004, nothing to learn from.

Stages write into ``<work>`` and are skipped when their output exists, so invocations with different
``--weights`` can run side by side on one work folder once the teacher and the pruned model exist; the
table lists every finished run. The Markdown table for docs/BENCHMARKS.md is printed with the command
line above it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402
from _common import command_line, md_table  # noqa: E402

from yoloslim.config import parse_overrides  # noqa: E402
from yoloslim.data.synth import synthesize  # noqa: E402
from yoloslim.engine.train import DISTILL_WEIGHT, TrainConfig, train  # noqa: E402
from yoloslim.workflows.prune import prune  # noqa: E402
from yoloslim.workflows.val import val  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/bench-distill", help="working folder")
    ap.add_argument("--model", default="yolov5n")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=30, help="teacher epochs")
    ap.add_argument("--finetune-epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--method", default="l1")
    ap.add_argument("--target-flops", type=float, default=0.4)
    ap.add_argument("--weights", type=float, nargs="*", default=[0.0, 0.5, 1.0, 2.0, 4.0],
                    help="distillation weights to try (0: no teacher)")
    ap.add_argument("--no-label-free", action="store_true", help="skip the label-free run")
    ap.add_argument("--hyp", nargs="*", default=["warmup_epochs=0", "lr0=0.02"], metavar="KEY=VALUE",
                    help="hyper-parameters of every run (default: no warm-up, lr0 0.02)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    work = Path(args.work)
    data = work / "data" / "data.yaml"
    if not data.is_file():
        synthesize(work / "data", images=args.images, imgsz=args.imgsz, seed=args.seed, progress=False)
    hyp = work / "hyp.yaml"
    hyp.write_text(yaml.safe_dump(parse_overrides(args.hyp)))
    common = {"epochs": args.finetune_epochs, "batch": args.batch, "imgsz": args.imgsz, "workers": 0,
              "seed": args.seed, "nominal_batch": args.batch, "hyp": str(hyp), "val_every_epoch": False}

    teacher = _train(work / "teacher", data=str(data), model=args.model, **{**common, "epochs": args.epochs})
    pruned = work / "pruned.safetensors"
    if not pruned.is_file():
        prune(str(teacher), args.method, target_flops=args.target_flops, imgsz=args.imgsz, out=str(pruned),
              latency_runs=0)
    rows = [["teacher", "", _score(teacher, data, args.imgsz)], ["pruned, no fine-tune", "", _score(pruned, data,
                                                                                                   args.imgsz)]]
    for w in args.weights:
        kw = {"teacher": str(teacher), "distill_weight": w} if w else {}
        _train(work / f"ft_w{w:g}", data=str(data), weights=str(pruned), **common, **kw)
    if not args.no_label_free:
        images = work / "images_only"
        if not images.is_dir():
            shutil.copytree(data.parent / "images" / "train", images)
        _train(work / "label_free", data=str(images), weights=str(pruned), teacher=str(teacher), **common)
    # every finished run in the work folder, also those of other invocations (runs may go side by side)
    for run in sorted(work.glob("ft_w*"), key=lambda p: float(p.name[4:])):
        if (run / "done").is_file():
            w = float(run.name[4:])
            rows.append([f"fine-tune {args.finetune_epochs} epochs", f"{w:g}" if w else "none (no teacher)",
                         _score(run / "weights" / "last.safetensors", data, args.imgsz)])
    if (work / "label_free" / "done").is_file():
        rows.append([f"label-free: {args.finetune_epochs} epochs on the train images, no labels",
                     f"{DISTILL_WEIGHT:g}", _score(work / "label_free" / "weights" / "last.safetensors", data,
                                                   args.imgsz)])
    table = [[name, w, f"{s['map50']:.3f}", f"{s['map']:.3f}"] for name, w, s in rows]
    (work / "distill.json").write_text(json.dumps({"command": command_line(__file__, argv), "rows": [
        {"model": name, "distill_weight": w, "map50": s["map50"], "map": s["map"]} for name, w, s in rows]},
        indent=1))
    print(command_line(__file__, argv))
    print(md_table(["model", "--distill-weight", "mAP@.5", "mAP@.5:.95"], table))
    return 0


def _train(run: Path, **cfg) -> Path:
    """Train into ``run`` unless it already finished; the last EMA weights."""
    done = run / "done"
    if not done.is_file():
        if run.exists():
            shutil.rmtree(run)
        train(TrainConfig(out=str(run), **cfg))
        done.write_text("")
    return run / "weights" / "last.safetensors"


def _score(weights: Path, data: Path, imgsz: int) -> dict:
    return val(str(weights), str(data), imgsz=imgsz, workers=0)


if __name__ == "__main__":
    raise SystemExit(main())
