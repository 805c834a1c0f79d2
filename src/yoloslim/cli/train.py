"""``yoloslim train``: train from scratch, sparsity-train, or fine-tune (a pruned model too)."""

from __future__ import annotations

import argparse

from yoloslim.cli.options import add_device, add_threads


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a detector (from scratch, from weights, with BN sparsity, or a "
                                     "pruned model's fine-tune)")
    p.add_argument("--data", help="a data.yaml or a VOC root (with --teacher also a folder of unlabelled images)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="a preset to train from scratch, e.g. yolov5s")
    src.add_argument("--weights", help="a model file to start from (a pruned one is trained as it is)")
    p.add_argument("--class-map", metavar="FILE",
                   help="with --weights: YAML 'data set name: model name' lines (default: match classes by name; "
                        "the head keeps the rows of the matched classes)")
    p.add_argument("--epochs", type=int, help="epochs (default 100)")
    p.add_argument("--batch", type=int, help="batch size over all processes (default 16)")
    p.add_argument("--nominal-batch", type=int, default=0, metavar="N",
                   help="accumulate gradients to N images per optimizer step (default 0 = auto: --batch, a step "
                        "on every batch, for --optimizer auto on a short run; else 64)")
    p.add_argument("--imgsz", type=int, help="image size (default 640)")
    p.add_argument("--optimizer", default="auto", metavar="SGD|Adam|AdamW|auto",
                   help="optimizer; auto = AdamW with a small lr up to 10k steps, SGD beyond (default auto); "
                        "SGD with the default hyp is the YOLOv5 recipe")
    p.add_argument("--sparsity", type=_sparsity, default=0.0, metavar="SR|auto",
                   help="L1 strength on the prunable BN γ (network slimming; e.g. 1e-3; default off); auto: "
                        "reach --sparsity-target")
    p.add_argument("--sparsity-target", type=float, default=None, metavar="F",
                   help="bring this fraction of prunable BN γ to 0 by the end, strength from the schedule "
                        "(implies --sparsity auto; default 0.5 with --sparsity auto)")
    p.add_argument("--sparsity-schedule", choices=["constant", "linear"], default="constant",
                   help="constant SR, or linear = SR·(1 − 0.9·epoch/epochs) (default constant)")
    p.add_argument("--sparsity-bias", action="store_true", help="also penalise BN β")
    p.add_argument("--teacher", metavar="MODEL",
                   help="distil from this model file (same family and classes; normally the unpruned model)")
    p.add_argument("--distill-weight", type=float, metavar="W",
                   help="weight of the distillation loss against the detection loss (default: the measured "
                        "one, TrainConfig.distill_weight)")
    p.add_argument("--distill-epochs", type=int, default=0, metavar="N",
                   help="distil during the first N epochs only, then train on the labels alone (early-stopped "
                        "distillation; default 0: every epoch)")
    p.add_argument("--distill-features", type=float, default=0.0, metavar="W",
                   help="also imitate the teacher's head features with this weight (channel-wise distillation "
                        "through 1x1 adapters that are not saved; default 0: outputs only)")
    p.add_argument("--hyp", help="YAML file overriding hyper-parameters (lr0, mosaic, ...)")
    p.add_argument("--cos-lr", action="store_true", help="cosine learning-rate decay (default linear)")
    p.add_argument("--patience", type=int, default=100, help="stop after this many epochs without "
                                                             "improvement (default 100)")
    p.add_argument("--no-augment", action="store_true", help="train on plain letterboxed images")
    p.add_argument("--no-aug-epochs", type=int, default=None, metavar="N",
                   help="last N epochs without mosaic/mixup/affine (YOLOX recipe: 15; default 10 for "
                        "YOLOv8/YOLO11, as ultralytics' close_mosaic, else 0)")
    p.add_argument("--cache", action="store_true", help="keep the images in RAM")
    p.add_argument("--workers", type=int, default=2, help="data loader processes (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--out", help="run folder (default: a new runs/train/expN)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_DIR_OR_STATE",
                   help="continue an interrupted run (default: the latest under runs/train)")
    add_device(p)
    add_threads(p)
    p.add_argument("--json", dest="json_file", help="also write the final numbers as JSON")
    p.add_argument("--no-plots", action="store_true",
                   help="skip the pictures written into the run folder at the end (results.png, PR curve, ...)")
    p.set_defaults(func=lambda a: _run(a))


def _run(a: argparse.Namespace) -> int:
    from yoloslim.workflows.train import train

    train(data=a.data, model=a.model, weights=a.weights, epochs=a.epochs, batch=a.batch, imgsz=a.imgsz,
          optimizer=a.optimizer, sparsity=a.sparsity, sparsity_target=a.sparsity_target,
          sparsity_schedule=a.sparsity_schedule, sparsity_bias=a.sparsity_bias,
          hyp=a.hyp, cos_lr=a.cos_lr, workers=a.workers, seed=a.seed, out=a.out, resume=a.resume,
          device=a.device, patience=a.patience, cache=a.cache, no_augment=a.no_augment,
          no_aug_epochs=a.no_aug_epochs, nominal_batch=a.nominal_batch, json_file=a.json_file,
          class_map=a.class_map, no_plots=a.no_plots, teacher=a.teacher, distill_weight=a.distill_weight,
          distill_epochs=a.distill_epochs, distill_features=a.distill_features)
    return 0


def _sparsity(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None
