"""Compression benchmark: converged baseline, control, prune + BN recalibration, fine-tune, distilled or not.

Usage (from the repository root)::

    .venv/bin/python bench/compress.py --work runs/bench-compress          # YOLOv5s, the defaults below
    .venv/bin/python bench/compress.py --model yolov3-tiny --work runs/bench-compress-v3tiny

The protocol of issue 12 (item 6), on the built-in synthetic data set (``yoloslim.data.synth``, written
to ``<work>/data`` at the training size and reused when present), for one model (``--model``, any preset):

1. ``baseline``: train from scratch until converged: in chunks of ``--chunk`` epochs (each a resumable
   run from the previous chunk's weights, validated every epoch) until the best val mAP@.5:.95 of the
   last ``--window`` epochs is less than ``--min-gain`` points above the best before them, or
   ``--max-epochs`` is spent; then settling runs of ``--settle-epochs`` epochs (default F) with the
   control's recipe, at most ``--settle-runs``, until one gains less than ``--min-gain`` over the model it
   started from: that model is the baseline (``bench/_baseline.py`` says why the chunks alone stop too
   early); whether it converged, its epochs and its mAP curve are recorded;
2. ``control``: the baseline trained F (``--finetune-epochs``) more epochs with the fine-tunes' recipe
   (``--finetune-optimizer``, ``--finetune-hyp``), as every pruned model is: Δ mAP is taken against it,
   so a baseline still learning cannot make pruning look like a gain. When the settling runs are F
   epochs (the default), the last one is the control and is not trained twice;
3. ``prune``: prune the baseline with ``--method`` (default ``auto``: the tool's default criterion) at
   every ``--target-flops`` value (the pruned model's FLOPs as a fraction of the baseline's; or at every
   ``--ratios`` value instead; ``--allocation sensitivity`` first measures the sensitivity curves and
   cuts by them), with BN recalibration on the train split as ``yoloslim prune --data``
   does by default; its mAP right after the cut is recorded with and without recalibration. A cut that
   would empty a channel group is refused by the pruner, and is then retried keeping the 8 strongest
   channels of such groups (``--min-channels 8``; the JSON and the table say so);
4. ``finetune``: train each pruned model F epochs with distillation from the baseline (``train
   --teacher``, ``-kd`` rows) and, as the comparison row, the same F epochs without it (``-ft`` rows),
   with the control's recipe (``--finetunes`` trains only some; ``fd``: imitating the baseline's head
   features alone, ``train --distill-weight 0 --distill-features W``, ``-fd`` rows);
5. ``measure``: mAP@.5 and mAP@.5:.95 on the val split (at the training size), params, GFLOPs at
   ``--latency-imgsz`` (640), and batch-1 CPU latency at that size in PyTorch (Conv+BN fused) and ONNX
   Runtime, all candidates timed alternately in one loop (``yoloslim.deploy.bench.benchmark``), so the
   speed-ups are ratios taken side by side. Baseline and control share one architecture and are timed
   once; each pruned architecture is timed once, with its distilled weights when there are some.

Every training uses ``TrainConfig``'s defaults but for batch, size, seed and the fine-tune recipe when
one is given (so the project's training recipe, whatever it is, is what is measured). Every model is the
EMA weights of its run's last epoch (``last``, never ``best``: the val split that reports mAP does not
also pick checkpoints). Each stage writes its model into ``<work>/models`` and is skipped when that file
exists; a training stage interrupted mid-way resumes from its last finished epoch. ``--stages`` runs
only some stages (the others' saved outputs are used), e.g. ``--stages measure`` re-measures saved
models. The results go to ``--json`` (default ``<work>/compress.json``) and the Markdown for
docs/BENCHMARKS.md is printed with the command line above it.

Sizing (docs/BENCHMARKS.md, "Compression benchmark", has the commands and the estimates per model):
400 images (300 train + 100 val) at 192 px, batch 8 without accumulation (38 optimizer steps per
epoch), baseline at most 150 epochs in chunks of 10, then settling runs, F = 100 (session 6: 20
recovered too little, and 20-epoch settling runs called baselines converged that were not; docs/BENCHMARKS.md,
"Session 6"), FLOPs targets 0.25 and 0.15 (session 2's
speed-ups at 640 put 2.5x ONNX Runtime near 25-28 % of the FLOPs and 3.5x near 15-18 %: the measure
stage reports what they give, and ``--stages baseline,control,prune,measure`` shows it before any
fine-tune is paid for; in session 6, YOLOv5s at 0.19 gave only 3.2x, no faster than 0.25). A YOLOv5s
epoch of these 300 images takes about 19 s on one thread (the other core busy), 13 s for a 25 % cut
distilled (the teacher's forward pass included), 7 s without distillation (session 6), so YOLOv5s's
worst case is 150 chunk epochs (~50 min), up to 3 settling runs of 100 (~100 min, the last being the
control) and 2 targets x 100 epochs with and without distillation (~75 min): about 3 h 45 min on one
core, less when it converges early. ``--allocation sensitivity`` adds the curves once per work folder:
YOLOv5s's 50 groups x 4 ratios took 18.5 min, YOLOv3-tiny's 11 x 4 took 4 min (session 7, beside
three trainings on the two cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from _baseline import BaselineRecord, Convergence, train_until_converged
from _common import Stopwatch, command_line, environment
from _compress_report import DISTILLED, FINETUNES, TARGETS, print_report

from yoloslim.config import read_yaml_mapping
from yoloslim.data.synth import synthesize
from yoloslim.engine.bootstrap import ROUNDS, ImageMatches, difference, draw_maps, intervals
from yoloslim.engine.optim import OPTIMIZERS
from yoloslim.engine.train import TrainConfig, train
from yoloslim.engine.train_state import load_state
from yoloslim.errors import UserError
from yoloslim.log import logger, setup_logging
from yoloslim.models import MODELS
from yoloslim.models.io import atomic_write, read_info
from yoloslim.prune import METHODS
from yoloslim.prune.allocate import ALLOCATIONS, ROUND_TO
from yoloslim.prune.recalibrate import CALIB_IMAGES
from yoloslim.workflows.report import write_json

STAGES = ("baseline", "control", "prune", "finetune", "measure")
FALLBACK_MIN_CHANNELS = 8  # kept per group when a cut would empty one
FEATURE_WEIGHT = 1.0  # --distill-features of the -fd fine-tunes (session 8, YOLOv3-tiny)
DEFAULT_FINETUNES = "kd,ft"


@dataclass(frozen=True)
class Settings:
    """What the saved models depend on; a work folder made with other settings is refused."""

    model: str
    images: int
    val_ratio: float
    imgsz: int
    max_epochs: int
    chunk: int
    window: int
    min_gain: float
    finetune_epochs: int
    batch: int
    nominal_batch: int
    seed: int
    round_to: int
    min_channels: int
    fold_bias: bool
    calib_images: int
    distill_weight: float
    hyp: str | None
    min_map: float
    settle_runs: int
    settle_epochs: int
    finetune_optimizer: str
    finetune_hyp: str | None
    distill_epochs: int
    distill_features: float

    def settle_is_control(self) -> bool:
        """The last settling run is the control when it is one: F epochs (they have the control's recipe)."""
        return bool(self.settle_runs) and self.settle_epochs == self.finetune_epochs


# settings that a work folder written before they existed holds implicitly: name -> value from the old file
# (its settling runs and control were F epochs of the one recipe, --hyp included)
IMPLIED = {"settle_epochs": lambda old: old.get("finetune_epochs"),
           "finetune_optimizer": lambda old: TrainConfig.optimizer, "finetune_hyp": lambda old: old.get("hyp"),
           "distill_epochs": lambda old: 0,
           "distill_features": lambda old: FEATURE_WEIGHT}  # no -fd model existed: the weight is the default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="yolov5s", help="model preset (default yolov5s)")
    ap.add_argument("--images", type=int, default=400, help="synthetic images (train + val)")
    ap.add_argument("--val-ratio", type=float, default=0.25, help="fraction of the images held out for val")
    ap.add_argument("--imgsz", type=int, default=192, help="training / evaluation size")
    ap.add_argument("--max-epochs", type=int, default=150, help="the baseline's epoch budget")
    ap.add_argument("--chunk", type=int, default=10, help="the baseline trains in runs of this many epochs")
    ap.add_argument("--window", type=int, default=10, help="convergence window, epochs")
    ap.add_argument("--min-gain", type=float, default=0.5,
                    help="converged: mAP@.5:.95 gained less than this many points over the window")
    ap.add_argument("--min-map", type=float, default=0.05,
                    help="a plateau below this val mAP@.5:.95 is a model that has not started learning, not "
                         "a converged one")
    ap.add_argument("--settle-runs", type=int, default=3,
                    help="after the chunks, at most this many runs of --settle-epochs until one gains under "
                         "--min-gain (0: none)")
    ap.add_argument("--settle-epochs", type=int, default=None,
                    help="epochs of each settling run, with the control's recipe (default F: the last run is "
                         "then the control; fewer make a cheaper but weaker convergence test)")
    ap.add_argument("--hyp", default=None, help="hyperparameter YAML of the baseline (default: the recipe's)")
    ap.add_argument("--finetune-epochs", type=int, default=100, help="fine-tune (and control) epochs F")
    ap.add_argument("--finetune-optimizer", default=TrainConfig.optimizer, choices=OPTIMIZERS,
                    help=f"optimizer of the settling runs, the control and the fine-tunes (default "
                         f"{TrainConfig.optimizer})")
    ap.add_argument("--finetune-hyp", default=None,
                    help="hyperparameter YAML of the settling runs, the control and the fine-tunes (default: the "
                         "recipe's, which gives a pruned model's fine-tune no warm-up)")
    ap.add_argument("--method", default="auto", choices=METHODS, help="pruning method (default auto)")
    ap.add_argument("--allocation", default=None, choices=ALLOCATIONS,
                    help="how many channels each group loses (prune --allocation; default the method's); "
                         "sensitivity first measures the curves (yoloslim sensitivity --metric output: no labels used) "
                         "into <work>/sensitivity-<method>.json; the models are named <method>-<allocation>-...")
    ap.add_argument("--target-flops", default="0.25,0.15",
                    help="pruned FLOPs as fractions of the baseline's, comma-separated (default 0.25,0.15)")
    ap.add_argument("--ratios", default=None, help="instead, pruning ratios, comma-separated")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--nominal-batch", type=int, default=None, help="accumulate to this (default: --batch)")
    ap.add_argument("--workers", type=int, default=1, help="data-loader workers")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data set and of training")
    ap.add_argument("--round-to", type=int, default=ROUND_TO,
                    help=f"pruned widths are multiples of this (default {ROUND_TO}, prune's)")
    ap.add_argument("--min-channels", type=int, default=0, help="floor per channel group (0: refuse, then 8)")
    ap.add_argument("--fold-bias", action="store_true", help="fold removed channels' act(β) into next biases")
    ap.add_argument("--calib-images", type=int, default=CALIB_IMAGES, help="BN recalibration images")
    ap.add_argument("--distill-weight", type=float, default=TrainConfig.distill_weight,
                    help="distillation loss weight of the -kd fine-tunes")
    ap.add_argument("--distill-epochs", type=int, default=TrainConfig.distill_epochs,
                    help="the -kd fine-tunes distil during their first this many epochs only (train "
                         "--distill-epochs; default 0: every epoch)")
    ap.add_argument("--distill-features", type=float, default=FEATURE_WEIGHT,
                    help=f"feature imitation weight of the -fd fine-tunes (train --distill-features; default "
                         f"{FEATURE_WEIGHT:g})")
    ap.add_argument("--work", default="runs/bench-compress", help="work folder (data, runs, models)")
    ap.add_argument("--stages", default="all", help=f"some of {','.join(STAGES)} (default all)")
    ap.add_argument("--finetunes", default=DEFAULT_FINETUNES,
                    help=f"which fine-tunes the finetune stage trains: some of {','.join(FINETUNES)} (kd: "
                         f"distilled, fd: feature-distilled, ft: plain; default {DEFAULT_FINETUNES})")
    ap.add_argument("--skip-latency", action="store_true", help="no latency measurement")
    ap.add_argument("--latency-imgsz", type=int, default=640, help="size of GFLOPs and latency")
    ap.add_argument("--latency-runs", type=int, default=30, help="timed rounds (every candidate once each)")
    ap.add_argument("--latency-seconds", type=float, default=300.0, help="time budget of the timed rounds")
    ap.add_argument("--threads", type=int, default=None, help="latency intra-op threads (default: torch's)")
    ap.add_argument("--bootstrap", type=int, default=ROUNDS,
                    help=f"draws of the val images for the intervals of each mAP and Δ (paired bootstrap; "
                         f"default {ROUNDS}, 0: none)")
    ap.add_argument("--json", dest="json_file", help="default <work>/compress.json")
    args = ap.parse_args(argv)
    if args.model not in MODELS:
        raise UserError(f"unknown --model {args.model!r}; presets: {', '.join(MODELS)}")
    flag, text = ("--ratios", args.ratios) if args.ratios is not None else ("--target-flops", args.target_flops)
    try:
        values = sorted({float(r) for r in text.split(",") if r.strip()})
    except ValueError:
        raise UserError(f"{flag} must be numbers separated by commas, got {text!r}") from None
    if not values or not all(0 < r < 1 for r in values):
        raise UserError(f"{flag} must be in (0, 1), got {values}")
    args.targets = [(flag.lstrip("-").replace("-", "_"), v) for v in values]
    stages = STAGES if args.stages == "all" else tuple(s.strip() for s in args.stages.split(","))
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UserError(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGES)} or all")
    args.stages = stages
    kinds = tuple(k.strip() for k in args.finetunes.split(",") if k.strip())
    if not kinds or any(k not in FINETUNES for k in kinds):
        raise UserError(f"--finetunes must be some of {','.join(FINETUNES)}, got {args.finetunes!r}")
    args.finetunes = kinds
    if args.settle_runs < 0:
        raise UserError(f"--settle-runs must be 0 or more, got {args.settle_runs}")
    args.nominal_batch = args.nominal_batch or args.batch
    args.settle_epochs = args.settle_epochs if args.settle_epochs is not None else args.finetune_epochs
    for key in ("images", "imgsz", "max_epochs", "chunk", "window", "finetune_epochs", "settle_epochs", "batch",
                "calib_images"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    if min(args.min_gain, args.distill_weight, args.min_map, args.distill_epochs, args.bootstrap,
           args.distill_features) < 0:
        raise UserError("--min-gain, --min-map, --distill-weight, --distill-epochs, --distill-features and "
                        "--bootstrap must be at least 0")
    for flag in ("hyp", "finetune_hyp"):
        if getattr(args, flag) and not Path(getattr(args, flag)).is_file():
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: no such file")
    return args


def label(method: str, kind: str, value: float) -> str:
    """``auto``, ``target_flops``, ``0.3`` -> ``auto-f30``; ``slim``, ``ratios``, ``0.5`` -> ``slim-50``.

    The pruned model's name (``auto-f30-kd`` / ``auto-f30-ft`` after fine-tuning). ``method`` is
    :func:`variant`'s.
    """
    return f"{method}-{'f' if kind == 'target_flops' else ''}{round(value * 100):02d}"


def title(method: str, kind: str, value: float) -> str:
    return f"{method.replace('-', ' ')} {'FLOPs ' if kind == 'target_flops' else ''}{value:g}"


def variant(args: argparse.Namespace) -> str:
    """The method as the models' names carry it: ``auto``, or ``auto-sensitivity`` with an allocation."""
    return f"{args.method}-{args.allocation}" if args.allocation else args.method


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    work = Path(args.work)
    (work / "models").mkdir(parents=True, exist_ok=True)
    setup_logging(work)
    settings = check_settings(work, args)
    command = command_line(__file__, argv)
    timings: dict[str, dict[str, float]] = {}

    def timed(stage: str, fn: Any, *a: Any, **kw: Any) -> Any:
        with Stopwatch() as sw:
            out = fn(*a, **kw)
        timings[stage] = sw.to_dict()
        return out

    models = work / "models"
    data = data_set(work / "data", args)
    base, control = models / "baseline.safetensors", models / "control.safetensors"
    f = args.finetune_epochs
    common = {"data": str(data), "batch": args.batch, "imgsz": args.imgsz, "workers": args.workers,
              "seed": args.seed, "nominal_batch": args.nominal_batch, "hyp": args.hyp}
    tune = {**common, "hyp": args.finetune_hyp, "optimizer": args.finetune_optimizer}  # settling, control, fine-tunes
    settled_control = settings.settle_is_control()
    if "baseline" in args.stages and not (base.is_file() and (control.is_file() or not settled_control)):
        timed("baseline", baseline_stage, base, control if settled_control else None, work, args, common, tune)
    if "control" in args.stages and not control.is_file():
        _need(control if settled_control else base, "baseline")  # the last settling run, when it is the control
        timed("control", train_stage, control, work / "runs" / "control", weights=str(base), epochs=f, **tune)
    names = {label(variant(args), k, v): (k, v) for k, v in args.targets}
    curves = work / f"sensitivity-{args.method}.json" if args.allocation == "sensitivity" else None
    for name, (kind, value) in names.items():
        pruned = models / f"{name}.safetensors"
        if "prune" in args.stages and not pruned.is_file():
            _need(base, "baseline")
            if curves is not None and not curves.is_file():
                timed("sensitivity", sensitivity_stage, base, curves, data, args)
            timed(f"prune {name}", prune_stage, base, pruned, {kind: value}, data, args, curves)
    for name in names:
        pruned = models / f"{name}.safetensors"
        for kind in args.finetunes:
            tuned = models / f"{name}-{kind}.safetensors"
            if "finetune" in args.stages and not tuned.is_file():
                _need(pruned, "prune")
                teacher = {"kd": {"teacher": str(base), "distill_weight": args.distill_weight,
                                  "distill_epochs": args.distill_epochs},
                           "fd": {"teacher": str(base), "distill_weight": 0.0,
                                  "distill_features": args.distill_features}}.get(kind, {})
                timed(f"finetune {name}-{kind}", train_stage, tuned, work / "runs" / f"{name}-{kind}",
                      weights=str(pruned), epochs=f, **teacher, **tune)
    if "measure" not in args.stages:
        return {"timings": timings}
    summary = timed("measure", measure, work, data, args)
    summary = {"command": command, "settings": asdict(settings), "settled_control": settled_control,
               "environment": environment(),
               "data": {"path": str(data), "images": args.images, "imgsz": args.imgsz},
               "baseline": _load_json(models / "baseline.json"), **summary,
               "timings": timings, "total_wall_s": round(sum(t["wall_s"] for t in timings.values()), 1)}
    json_file = Path(args.json_file) if args.json_file else work / "compress.json"
    write_json(json_file, summary)
    print_report(summary)
    print(f"\n(JSON: {json_file})")
    return summary


def check_settings(work: Path, args: argparse.Namespace) -> Settings:
    """Refuse a work folder whose saved models were made with other settings."""
    settings = Settings(args.model, args.images, args.val_ratio, args.imgsz, args.max_epochs, args.chunk,
                        args.window, args.min_gain, args.finetune_epochs, args.batch, args.nominal_batch,
                        args.seed, args.round_to, args.min_channels, args.fold_bias, args.calib_images,
                        args.distill_weight, args.hyp, args.min_map, args.settle_runs, args.settle_epochs,
                        args.finetune_optimizer, args.finetune_hyp, args.distill_epochs, args.distill_features)
    path = work / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        old.update({k: implied(old) for k, implied in IMPLIED.items() if k not in old})
        diff = [f"{k} {old.get(k)!r} there, {v!r} here" for k, v in asdict(settings).items()
                if old.get(k) != v]
        if diff:
            raise UserError(f"{work} holds models made with other settings ({'; '.join(diff)}); "
                            "choose another --work, or delete that folder")
    else:
        write_json(path, asdict(settings))
    return settings


def data_set(folder: Path, args: argparse.Namespace) -> Path:
    """The synthetic data set's data.yaml, written at the training size unless already there."""
    data = folder / "data.yaml"
    if data.is_file():
        logger.info(f"reusing the data set {data}")
        return data
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted synthesis (no data.yaml yet)
    logger.info(f"synthesizing {args.images} images of {args.imgsz} px into {folder}")
    return synthesize(folder, fmt="yolo", images=args.images, imgsz=args.imgsz, seed=args.seed,
                      val_ratio=args.val_ratio)


def baseline_stage(out: Path, control: Path | None, work: Path, args: argparse.Namespace,
                   common: dict[str, Any], tune: dict[str, Any]) -> BaselineRecord:
    """Train the baseline until converged (chunks, then settling runs, in ``runs/baseline``); its record
    goes to ``baseline.json``, and the last settling run's model to ``control`` when that run is the control.
    The chunks train with ``common``'s recipe, the settling runs with the control's (``tune``): the baseline
    is converged for the recipe its control and fine-tunes use."""
    conv = Convergence(args.max_epochs, args.chunk, args.window, args.min_gain / 100, args.min_map,
                       settle_epochs=args.settle_epochs, max_settle=args.settle_runs)
    hyp = read_yaml_mapping(args.hyp, "hyp") if args.hyp else {}
    restart = work / "hyp-restart.yaml"  # the chunks after the first: the same recipe, no second warm-up
    restart.write_text(yaml.safe_dump({**hyp, "warmup_epochs": 0.0}))

    def chunk(run: Path, settle: bool, **cfg: Any) -> Path:
        last = run / "weights" / "last.safetensors"
        state = run / "weights" / "last_state.pt"
        if state.is_file() and last.is_file() and int(load_state(state)["epoch"]) >= cfg["epochs"]:
            return last  # a finished chunk
        if settle:
            return train_stage(None, run, **cfg, **tune)
        hyp_file = {"hyp": str(restart)} if "weights" in cfg else {}
        return train_stage(None, run, val_every_epoch=True, **cfg, **{**common, **hyp_file})

    last, settled, record = train_until_converged(work / "runs" / "baseline", conv, chunk, args.model)
    write_json(out.with_suffix(".json"), record.to_dict())
    atomic_write(out, lambda tmp: shutil.copyfile(last, tmp))
    if settled is not None and control is not None:
        atomic_write(control, lambda tmp: shutil.copyfile(settled, tmp))
    return record


def train_stage(out: Path | None, run: Path, **cfg: Any) -> Path:
    """Train (or resume an interrupted run in ``run``), then copy the last EMA weights to ``out``.

    Returns:
        ``out``, or without it the run's last weights.
    """
    state = run / "weights" / "last_state.pt"
    last = run / "weights" / "last.safetensors"
    if state.is_file():
        saved = load_state(state)
        if int(saved["epoch"]) < int(saved["config"]["epochs"]):
            logger.info(f"resuming {run} at epoch {int(saved['epoch']) + 1}")
            train(TrainConfig(resume=str(run), workers=cfg["workers"]))
    else:
        if run.exists():
            shutil.rmtree(run)  # a run that stopped before its first epoch ended
        train(TrainConfig(out=str(run), cache=True, plots=False, **{"val_every_epoch": False, **cfg}))
    if out is None:
        return last
    atomic_write(out, lambda tmp: shutil.copyfile(last, tmp))
    return out


def sensitivity_stage(base: Path, out: Path, data: Path, args: argparse.Namespace) -> Path:
    """The sensitivity curves of ``base`` for ``--allocation sensitivity``, into ``out`` (``yoloslim
    sensitivity`` with the output-distance proxy on val images: their labels, which score the models,
    do not also choose the models' shapes)."""
    from yoloslim.workflows.sensitivity import sensitivity

    sensitivity(str(base), str(data), method=args.method, metric="output", out=str(out.with_suffix("")),
                json_file=str(out), imgsz=args.imgsz, batch=2 * args.batch, workers=args.workers, device="cpu")
    return out


def prune_stage(base: Path, out: Path, target: dict[str, float], data: Path | None,
                args: argparse.Namespace, curves: Path | None = None) -> Path:
    """Prune ``base`` into ``out`` (the ``yoloslim prune`` workflow), its report into ``out``'s ``.json``.

    ``target`` is ``{"ratio": r}`` or ``{"target_flops": f}``. With ``data`` the pruner recalibrates the
    batch norms on its train split (keeping the recalibration only when it does not lower the val mAP,
    as ``prune --data`` does) and reports the val mAP with and without it. ``curves``: the sensitivity
    curves of ``--allocation sensitivity``.
    """
    from yoloslim.workflows.prune import prune

    kind, value = next(iter(target.items()))
    kw = {"weights": str(base), "method": args.method, kind.replace("ratios", "ratio"): value,
          "round_to": args.round_to, "fold_bias": args.fold_bias, "imgsz": args.imgsz, "out": str(out),
          "latency_runs": 0, "json_file": str(out.with_suffix(".json")), "batch": 2 * args.batch,
          "workers": args.workers, "calib_images": args.calib_images, "device": "cpu",
          "allocation": args.allocation, "sensitivity": str(curves) if curves else None}
    if data is not None:
        kw["data"] = str(data)
    try:
        prune(min_channels=args.min_channels, **kw)
    except UserError as err:
        if args.min_channels or args.method == "layer":
            raise
        logger.warning(f"{err}; pruning again, keeping the {FALLBACK_MIN_CHANNELS} strongest channels "
                       "of such groups")
        prune(min_channels=FALLBACK_MIN_CHANNELS, **kw)
    return out


@dataclass(frozen=True)
class Entry:
    """One model of the report: ``arch`` is shared by models of one architecture (timed once)."""

    name: str
    title: str
    path: Path
    epochs: int
    arch: str
    timed: bool = False  # these weights stand for the architecture in the latency loop


def entries(work: Path, args: argparse.Namespace) -> list[Entry]:
    """Every model the stages make, in report order (missing files included)."""
    m = work / "models"
    e = int(_load_json(m / "baseline.json").get("epochs", 0))
    f = args.finetune_epochs
    out = [Entry("baseline", "baseline", m / "baseline.safetensors", e, "baseline", timed=True),
           Entry("control", "control", m / "control.safetensors", e + f, "baseline")]
    for kind, value in args.targets:
        name, t = label(variant(args), kind, value), title(variant(args), kind, value)
        out.append(Entry(name, f"{t}, pruned", m / f"{name}.safetensors", e, name))
        out += [Entry(f"{name}-{k}", f"{t} {words}", m / f"{name}-{k}.safetensors", e + f, name,
                      timed=k == "kd") for k, words in FINETUNES.items()]
    return out


def measure(work: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """mAP, params, GFLOPs and latency of every saved model, with the ratios to the baseline and control."""
    from yoloslim.data.dataset import DetectionDataset, create_loader, load_data
    from yoloslim.engine.evaluate import evaluate
    from yoloslim.models.io import load_model
    from yoloslim.models.profile import count_params, profile, total_gflops

    present = [x for x in entries(work, args) if x.path.is_file()]
    if not present:
        raise UserError(f"no saved models in {work / 'models'}: run the training stages first")
    source = load_data(data)
    loader = create_loader(DetectionDataset(source.splits["val"], args.imgsz), batch_size=2 * args.batch,
                           shuffle=False, workers=args.workers)
    cache_path = work / "evals.json"  # mAP per model file, so that re-measuring only re-times
    cache = _load_json(cache_path)
    rows, nets, matches = [], {}, {}
    for x in present:
        model, _ = load_model(x.path)
        model.eval()
        st = x.path.stat()
        stamp = f"{st.st_size}-{st.st_mtime_ns}-{args.imgsz}"
        ev = cache.get(x.name)
        matches_file = work / "evals" / f"{x.name}.npz"  # what the bootstrap draws from
        if not ev or ev.get("stamp") != stamp or not matches_file.is_file():
            logger.info(f"evaluating {x.name} on {len(loader.dataset)} val images")
            res = evaluate(model, loader, source.names)
            m = res.metrics
            matches_file.parent.mkdir(exist_ok=True)
            ImageMatches.from_metrics(res.detections).save(matches_file)
            ev = {"stamp": stamp, **{k: round(float(getattr(m, k)), 5) for k in ("map50", "map", "precision",
                                                                                  "recall")}}
            cache[x.name] = ev
            write_json(cache_path, cache)
        matches[x.name] = ImageMatches.load(matches_file)
        row = {"name": x.name, "title": x.title, "file": str(x.path), "epochs": x.epochs, "arch": x.arch,
               **{k: ev[k] for k in ("map50", "map", "precision", "recall")},
               "params": count_params(model),
               "gflops": round(total_gflops(profile(model, args.latency_imgsz)), 4)}
        pe = prune_event(x.path)
        if pe:
            keys = ("method", "allocation", "ratio", "target_flops", "held", "min_channels", "round_to",
                    "fold_bias", "calib_images", "calib_kept")
            row["prune"] = {k: pe[k] for k in keys if k in pe}
        if x.name == x.arch and x.name != "baseline":  # a pruned model right after the cut
            row["right_after_pruning"] = recalibration_figures(x.path.with_suffix(".json"))
        rows.append(row)
        if x.timed or x.arch not in nets:
            nets[x.arch] = model
    latency: dict[str, dict[str, dict[str, float]]] = {}
    ort_error = None
    if not args.skip_latency:
        from yoloslim.deploy.bench import benchmark

        logger.info(f"timing {len(nets)} architectures at {args.latency_imgsz} px, batch 1, alternately")
        timing = {"threads": args.threads, "runs": args.latency_runs, "warmup": 5,
                  "max_seconds": args.latency_seconds}
        try:
            lat = benchmark(nets, args.latency_imgsz, ("torch", "onnxruntime"), **timing)
        except UserError as err:  # an export that fails (a parity miss is only warned about): time PyTorch alone
            ort_error = str(err)
            logger.warning(f"ONNX Runtime not timed: {err}")
            lat = benchmark(nets, args.latency_imgsz, ("torch",), **timing)
        latency = {arch: {b: v.to_dict() for b, v in per.items()} for arch, per in lat.items()}
    _derive(rows, latency)
    if args.bootstrap:
        logger.info(f"bootstrap intervals: {args.bootstrap} draws of the {len(loader.dataset)} val images")
        bootstrap_intervals(rows, matches, args.bootstrap)
    return {"val_images": len(loader.dataset), "eval_imgsz": args.imgsz, "latency_imgsz": args.latency_imgsz,
            "latency": {"threads": args.threads, "runs": args.latency_runs, "per_arch": latency,
                        "onnxruntime_error": ort_error},
            "models": rows}


def recalibration_figures(report: Path) -> dict[str, Any] | None:
    """Val mAP right after the cut without and with BN recalibration, from the pruner's JSON report.

    Returns:
        ``{"no_recal": {"map50", "map"}, "recal": {...}, "kept": bool}``, or None without a report (or
        one made without ``--data``).
    """
    s = _load_json(report)
    calib = s.get("calib")
    if not s.get("uncalibrated") or not calib:
        return None
    recal = s["recalibrated"] if not calib["kept"] else {k: s["after"][k] for k in ("map50", "map")}
    return {"no_recal": s["uncalibrated"], "recal": recal, "kept": calib["kept"], "images": calib["images"]}


def _derive(rows: list[dict[str, Any]], latency: dict[str, dict[str, dict[str, float]]]) -> None:
    """Add removed fractions, mAP deltas (points), latencies and speed-ups (baseline / model) to the rows."""
    by = {r["name"]: r for r in rows}
    base, control = by.get("baseline"), by.get("control")
    ref_lat = latency.get("baseline")
    for r in rows:
        if base:
            r["params_removed"] = round(1 - r["params"] / base["params"], 5)
            r["flops_removed"] = round(1 - r["gflops"] / base["gflops"], 5)
            r["delta_map_vs_baseline"] = round((r["map"] - base["map"]) * 100, 3)
        r["delta_map_vs_control"] = round((r["map"] - control["map"]) * 100, 3) if control else None
        lat = latency.get(r["arch"])
        for b in ("torch", "onnxruntime"):
            ms, ref = (lat or {}).get(b), (ref_lat or {}).get(b)
            r[f"{b}_ms"] = ms["median_ms"] if ms else None
            r[f"{b}_speedup"] = round(ref["median_ms"] / ms["median_ms"], 3) if ms and ref else None
        if r["name"].endswith(tuple(f"-{k}" for k in FINETUNES)):
            r["targets"] = {k: None if r.get(key) is None else r[key] >= v
                            for k, (key, v) in TARGETS.items()}
            plain = by.get(r["name"][:-2] + "ft")
            if r["name"].endswith(tuple(f"-{k}" for k in DISTILLED)) and plain:
                r["distill_gain"] = round((r["map"] - plain["map"]) * 100, 3)


def bootstrap_intervals(rows: list[dict[str, Any]], matches: dict[str, ImageMatches], rounds: int) -> None:
    """Add the bootstrap intervals, in points of mAP@.5:.95, over draws of the val images: each row's mAP
    (``map_ci``), its Δ against the control (``delta_vs_control_ci``, paired) and distillation's gain over
    the same fine-tune without it (``distill_gain_ci``, paired). Every model is scored once on the same
    draws."""
    drawn = draw_maps(matches, rounds)
    for r in rows:
        name, plain = r["name"], r["name"][:-2] + "ft"
        r["map_ci"] = intervals(*drawn[name])["map"].to_dict(100, 3)
        if "control" in drawn and name != "control":
            r["delta_vs_control_ci"] = difference(drawn, "control", name)["map"].to_dict(100, 3)
        if name.endswith(tuple(f"-{k}" for k in DISTILLED)) and plain in drawn:
            r["distill_gain_ci"] = difference(drawn, plain, name)["map"].to_dict(100, 3)


def prune_event(path: Path) -> dict[str, Any] | None:
    """The ``pruned`` history entry of a model file (method, ratio, held groups, min_channels)."""
    events = [e for e in read_info(path).history if e.get("action") == "pruned"]
    return events[-1] if events else None


def _need(path: Path, stage: str) -> None:
    if not path.is_file():
        raise UserError(f"{path} is missing: run the {stage} stage first (--stages {stage},...)")


def _load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


if __name__ == "__main__":
    import sys

    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
