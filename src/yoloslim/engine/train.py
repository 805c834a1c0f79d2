"""The training loop: one for every family, sparsity training and fine-tuning included.

Plain functions in a visible order, no callbacks::

    train(cfg)
      setup: data -> model -> loss -> loaders -> optimizer, EMA -> (resume) -> DDP wrap -> sparsity
      for each epoch:
        train_one_epoch: forward -> loss -> backward -> [every `accumulate` batches]
                         unscale -> sparsity.apply -> clip -> optimizer.step -> EMA update
                         -> sparsity.hold_zeros (a sparsity target's zeros reach the EMA)
        end_of_epoch (rank 0): check the weights -> validate the EMA model -> results.csv, log, γ histogram
        save_checkpoints (rank 0): best fitness -> last/best.safetensors (EMA) -> last_state.pt

SGD (Nesterov), Adam or AdamW (``auto``: AdamW for short runs, SGD for long ones) with three
parameter groups, linear warm-up of learning rates and momentum over
``max(warmup_epochs · batches, 100)`` iterations (no floor for YOLOv8 / YOLO11; none when
``warmup_epochs`` is 0), a
linear or cosine schedule, EMA of the weights (YOLOv5's, averaging at most a few epochs on small data
sets), gradient accumulation to a nominal batch (64, or every batch on a short ``auto`` run), AMP on
CUDA. An epoch never leaves gradients pending (a last partial accumulation is applied at its end), so
``--resume`` from the end of an epoch gives the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from yoloslim.config import from_dict
from yoloslim.engine import ddp
from yoloslim.engine.distill_setup import (
    PSEUDO_CONF,
    check_teacher,
    image_folder_source,
    is_image_folder,
    load_teacher,
    teacher_labels,
)
from yoloslim.engine.ema import ModelEMA, run_horizon
from yoloslim.engine.optim import (
    build_optimizer,
    choose_optimizer,
    few_steps_advice,
    nominal_batch_for,
    optimizer_name,
    optimizer_steps,
    warmup_iterations,
)
from yoloslim.engine.run_files import (
    ResultsCSV,
    Scalars,
    new_run_dir,
    write_args,
)
from yoloslim.engine.train_epoch import (  # noqa: F401 (TrainingDiverged: re-exported)
    Parts,
    Progress,
    TrainingDiverged,
    TrainingInterrupted,
    end_of_epoch,
    make_scaler,
    restore_state,
    save_checkpoints,
    train_one_epoch,
)
from yoloslim.engine.train_setup import (
    find_resume_state,
    initial_model,
    load_training_data,
    make_loaders,
    read_resume_state,
    spec_of,
)
from yoloslim.errors import UserError
from yoloslim.hyp import family_defaults, hyp_from_dict, load_hyp
from yoloslim.log import logger, setup_logging
from yoloslim.loss import make_loss
from yoloslim.loss.distill import DistillLoss
from yoloslim.models import build_model
from yoloslim.models.io import ModelInfo, unwrap
from yoloslim.models.spec import check_imgsz
from yoloslim.prune.sparsity import BNSparsity, check_target
from yoloslim.viz.run_plots import write_training_plots

DISTILL_WEIGHT = 1.0  # best of 0.5/1/2/4 on a pruned YOLOv5n: docs/BENCHMARKS.md, "Distillation"


@dataclass
class TrainConfig:
    """Everything a training run is given (saved in its state, so ``--resume`` needs nothing else).

    Attributes:
        data: a data.yaml or a VOC root.
        model: preset name to train from scratch (e.g. ``yolov5n``); or
        weights: a model file to start from (a pruned one is fine-tuned as it is).
        epochs: epochs in total.
        batch: batch size over all processes.
        imgsz: training and validation image size (a multiple of the largest stride).
        device: ``cpu``, ``cuda``, ``cuda:N``, ``N`` or ``mps``; "" for cuda when available, else cpu
            (see :mod:`yoloslim.device`).
        workers: data-loader worker processes.
        out: the run folder (default: a new ``project/expN``).
        project: where numbered run folders go.
        resume: a run folder or state file to continue ("" = the latest run under ``project``).
        seed: seed of initialisation, shuffling and augmentation.
        hyp: a YAML file overriding :class:`Hyp` keys (augmentation keys included).
        cos_lr: cosine instead of linear learning-rate decay.
        optimizer: ``SGD``, ``Adam``, ``AdamW`` or ``auto`` (AdamW with a small learning rate up to
            10k optimiser steps, SGD beyond; see :func:`yoloslim.engine.optim.choose_optimizer`).
            ``SGD`` with the default hyp is the YOLOv5 recipe.
        sparsity: L1 strength on prunable BN γ (0 = off).
        sparsity_target: instead of a strength, the fraction of prunable γ to bring to 0 by the end
            (strength from the schedule; 0 = off).
        sparsity_schedule: ``constant`` or ``linear``.
        sparsity_bias: also penalise BN β.
        patience: stop after this many epochs without a better fitness.
        augment: use the hyp's augmentations (False: plain letterboxing).
        no_aug_epochs: the last this many epochs train without mosaic, mixup and affine warps (flips
            and HSV stay), and tell the loss (YOLOX switches its L1 term on); the official YOLOX
            recipe uses 15. None: the family's default (:data:`yoloslim.hyp.FAMILY_DEFAULTS`: 10 for
            YOLOv8 / YOLO11, ultralytics' ``close_mosaic``; 0 for the others), resolved before the
            run starts, so the resume state holds the number.
        nominal_batch: gradients are accumulated to this many images per step; 0 (auto): the batch
            itself for ``optimizer`` auto on a short run, else 64 (see
            :func:`yoloslim.engine.optim.nominal_batch_for`).
        cache: keep the images in RAM.
        val_every_epoch: validate every epoch (else only after the last).
        save_every: write ``last.safetensors`` and the resume state every this many epochs (and
            after the last); ``best.safetensors`` is written whenever the fitness improves.
        class_map: with ``weights``, a YAML file mapping the data set's class names to the model's;
            without it classes are matched by name. The head keeps the model's rows of the matched
            classes (see :func:`yoloslim.engine.train_setup.initial_model`).
        plots: at the end of the run, write its pictures into the run folder (results.png, labels.png,
            PR and F1 curves, confusion matrix, validation images; see :mod:`yoloslim.viz.run_plots`).
        teacher: a model file to distil from (same family, classes and head; normally the unpruned
            model); its distillation loss is added to the detection loss. With ``data`` a folder of
            unlabelled images, it is the whole loss (label-free recovery).
        distill_weight: weight of the distillation loss against the detection loss.
        distill_epochs: distil during the first this many epochs only, then train on the labels alone
            (early-stopped distillation: the teacher guides the recovery, the labels finish it); 0: every
            epoch. Not with unlabelled data, where distillation is the whole loss.
        distill_features: weight of the imitation of the teacher's head features (channel-wise
            distillation through 1×1 adapters that train with the student and are not saved in the
            model file, :mod:`yoloslim.loss.feature_distill`), added to the output distillation; 0: none.
    """

    data: str = ""
    model: str | None = None
    weights: str | None = None
    epochs: int = 100
    batch: int = 16
    imgsz: int = 640
    device: str = ""
    workers: int = 2
    out: str | None = None
    project: str = "runs/train"
    resume: str | None = None
    seed: int = 0
    hyp: str | None = None
    cos_lr: bool = False
    optimizer: str = "auto"
    sparsity: float = 0.0
    sparsity_target: float = 0.0
    sparsity_schedule: str = "constant"
    sparsity_bias: bool = False
    patience: int = 100
    augment: bool = True
    no_aug_epochs: int | None = None
    nominal_batch: int = 0
    cache: bool = False
    val_every_epoch: bool = True
    save_every: int = 1
    class_map: str | None = None
    plots: bool = True
    teacher: str | None = None
    distill_weight: float = DISTILL_WEIGHT
    distill_epochs: int = 0
    distill_features: float = 0.0


@dataclass
class TrainResult:
    """Where a run left its files, and its final numbers."""

    best: Path
    last: Path
    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def train(cfg: TrainConfig) -> TrainResult:
    """Train a detector as ``cfg`` says; under ``torchrun`` every process calls this."""
    d = ddp.from_env()
    device = ddp.setup(d, cfg.device)
    if not d.main:
        logger.remove()  # rank 0 speaks for the job; the others' errors still raise
    started: list[Path] = []  # the run folder, once _train has chosen it
    try:
        return _train(cfg, d, device, started)
    except KeyboardInterrupt:
        raise TrainingInterrupted.of_run(started[0] if started else None) from None
    finally:
        ddp.cleanup(d)


def _train(cfg: TrainConfig, d: ddp.Dist, device: torch.device, started: list[Path]) -> TrainResult:
    cfg, state = _resume_config(cfg)
    _check_config(cfg)
    _seed_everything(cfg.seed + d.rank)
    teacher = load_teacher(cfg.teacher, device) if cfg.teacher else None
    label_free = is_image_folder(cfg.data)
    source = image_folder_source(cfg.data, teacher) if label_free else load_training_data(cfg.data)
    if state:
        spec, names, history = spec_of(state)
        model, info = build_model(spec), ModelInfo(spec, names, cfg.imgsz, history)
    else:
        model, info = initial_model(cfg.model, cfg.weights, source.names, cfg.imgsz, cfg.class_map)
    check_imgsz(cfg.imgsz, info.spec)
    if teacher is not None:
        check_teacher(teacher.info.spec, info.spec, teacher.path)
    family = info.spec.family
    pruned = any(e.get("action") == "pruned" for e in info.history)
    hyp = hyp_from_dict(state["hyp"]) if state else load_hyp(cfg.hyp, family=family, pruned=pruned)
    if cfg.no_aug_epochs is None:
        cfg = dataclasses.replace(cfg, no_aug_epochs=family_defaults(family).no_aug_epochs)
    requested_nominal = cfg.nominal_batch
    cfg = dataclasses.replace(cfg, nominal_batch=nominal_batch_for(
        cfg.nominal_batch, cfg.optimizer, len(source.splits["train"]), cfg.batch, cfg.epochs))
    run_dir = _run_dir(cfg, d)  # created only once the inputs are known to be good
    started.append(run_dir)
    if d.main:
        setup_logging(run_dir)
        write_args(run_dir, dataclasses.asdict(cfg), hyp.to_dict())
    model = model.to(device)
    loss_fn = make_loss(model, hyp, cfg.imgsz)
    if label_free and d.main:  # rank 0 validates
        source.splits["val"] = teacher_labels(teacher, source.splits["val"], cfg.imgsz, device)
    augment = hyp.augment if cfg.augment else None
    train_loader, train_ds, sampler, val_loader = make_loaders(
        source, cfg.imgsz, cfg.batch, cfg.workers, cfg.seed, augment, cfg.cache, d)

    accumulate = max(round(cfg.nominal_batch / cfg.batch), 1)
    weight_decay = hyp.weight_decay * cfg.batch * accumulate / cfg.nominal_batch
    steps = optimizer_steps(len(train_ds), cfg.batch, cfg.nominal_batch, cfg.epochs)
    choice = choose_optimizer(cfg.optimizer, hyp.lr0, hyp.momentum, hyp.warmup_bias_lr, steps, len(source.names))
    optimizer = build_optimizer(model, choice.lr, choice.momentum, weight_decay, choice.name)
    # what the steps use (``auto`` may replace lr0, momentum, warmup_bias_lr); the state keeps the hyp as given
    step_hyp = dataclasses.replace(hyp, lr0=choice.lr, momentum=choice.momentum,
                                   warmup_bias_lr=choice.warmup_bias_lr)
    ema = ModelEMA.for_epoch_length(model, math.ceil(len(train_loader) / accumulate), run_horizon(cfg.epochs))
    scaler = make_scaler(device)
    parts = Parts(model, model, optimizer, scaler, ema, loss_fn, None)
    if teacher is not None:  # before the resume state: the feature adapters are in it, and in the optimizer
        parts.distill = DistillLoss(teacher.model, cfg.distill_weight, detection=not label_free, student=model,
                                    feature_weight=cfg.distill_features, probe_size=cfg.imgsz)
        if parts.distill.imitation is not None:
            optimizer.add_param_group({"params": list(parts.distill.imitation.parameters()), "weight_decay": 0.0,
                                       "initial_lr": choice.lr})
    progress = restore_state(parts, state) if state else Progress()
    parts.net = ddp.wrap(model, d, device)
    parts.sparsity = _make_sparsity(cfg, model, len(train_loader))

    sparse = cfg.sparsity > 0 or cfg.sparsity_target > 0
    event = "sparse-trained" if sparse else ("fine-tuned" if cfg.weights else "trained")
    csv = ResultsCSV(run_dir / "results.csv", keep_epochs_below=progress.start_epoch + 1 if state else None)
    scalars = Scalars(run_dir, enabled=d.main)
    if d.main:
        logger.info(f"{'resuming' if state else 'training'} {info.spec.name} ({len(source.names)} classes) "
                    f"on {cfg.data} at epoch {progress.start_epoch + 1}/{cfg.epochs}: {len(train_ds)} train "
                    f"images, batch {cfg.batch}, {cfg.imgsz} px, {device}"
                    f"{f' x {d.world_size}' if d.enabled else ''}; run folder {run_dir}")
        logger.info(f"optimizer {choice.name} (--optimizer {cfg.optimizer}, {steps} steps), lr0 {choice.lr:g}, "
                    f"momentum {choice.momentum:g}, warm-up bias lr {choice.warmup_bias_lr:g}")
        advice = few_steps_advice(requested_nominal, cfg.optimizer, cfg.nominal_batch, cfg.batch, steps)
        if advice:
            logger.warning(advice)
        if teacher is not None:
            n_val = len(source.splits["val"])
            logger.info(f"distilling from {cfg.teacher} (weight {cfg.distill_weight}"
                        + (f", the first {cfg.distill_epochs} epochs" if cfg.distill_epochs else "")
                        + (f"; head features imitated, weight {cfg.distill_features}" if cfg.distill_features
                           else "") + ")"
                        + (": label-free, the teacher's outputs are the only target; validation is agreement "
                           f"with the teacher: mAP against its detections (score >= {PSEUDO_CONF}) on "
                           f"{n_val} held-out image{'s' if n_val != 1 else ''}, not accuracy" if label_free else ""))
    nb = len(train_loader)
    n_warmup = warmup_iterations(hyp.warmup_epochs, nb, family_defaults(family).min_warmup_iters)
    metrics: dict[str, Any] = {}
    for epoch in range(progress.start_epoch, cfg.epochs):
        train_ds.set_epoch(epoch)
        if cfg.no_aug_epochs and epoch >= cfg.epochs - cfg.no_aug_epochs:
            stop_strong_augmentation(train_ds, parts.loss_fn, epoch, d.main)
        if sampler is not None:
            sampler.set_epoch(epoch)
        t0 = time.time()
        train_losses = train_one_epoch(parts, train_loader, epoch, cfg, step_hyp, n_warmup, d, device, run_dir)
        stop = False
        if d.main:
            validate = cfg.val_every_epoch or epoch == cfg.epochs - 1
            metrics = end_of_epoch(parts, val_loader, source.names, epoch, cfg, train_losses,
                                   validate=validate, device=device, csv=csv, scalars=scalars,
                                   run_dir=run_dir, seconds=time.time() - t0)
            stop = save_checkpoints(parts, cfg, hyp, info, event, epoch, metrics, progress, run_dir)
        if ddp.broadcast_flag(stop, d, device):
            break
    scalars.close()
    weights = run_dir / "weights"
    if d.main:
        metrics.update(best_epoch=progress.best_epoch + 1, best_fitness=progress.best_fitness)
        logger.info(f"done: best epoch {progress.best_epoch + 1} (fitness {progress.best_fitness:.4f}); "
                    f"{weights / 'best.safetensors'}, {weights / 'last.safetensors'}")
        if cfg.plots:
            try:  # the weights are saved: a picture that fails must not fail the run
                write_training_plots(run_dir, weights / "best.safetensors", val_loader, source.splits["train"],
                                     source.names, device)
            except Exception as e:
                logger.warning(f"the pictures of the run were not all written ({e.__class__.__name__}: {e})")
    ddp.barrier(d)
    return TrainResult(weights / "best.safetensors", weights / "last.safetensors", run_dir, metrics)


def _resume_config(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """With ``cfg.resume``: the saved config (device, workers and plots from ``cfg``) and the saved state."""
    if cfg.resume is None:
        return cfg, None
    state_path = find_resume_state(cfg.resume, cfg.project)
    state = read_resume_state(state_path)
    state["config"].setdefault("optimizer", "SGD")  # saved before --optimizer existed: SGD was the only one
    saved = dataclasses.replace(from_dict(TrainConfig, state["config"], source=str(state_path)), resume=None,
                                device=cfg.device, workers=cfg.workers, plots=cfg.plots,
                                out=str(state_path.parent.parent))
    if state["epoch"] >= saved.epochs:
        raise UserError(f"{state_path}: that run already finished its {saved.epochs} epochs; "
                        "start a new one with --weights")
    return saved, state


def _make_sparsity(cfg: TrainConfig, model: nn.Module, batches_per_epoch: int):
    if cfg.sparsity <= 0 and cfg.sparsity_target <= 0:
        return None
    return BNSparsity(unwrap(model), cfg.sparsity, cfg.sparsity_schedule, cfg.sparsity_bias,
                      target=cfg.sparsity_target, batches_per_epoch=batches_per_epoch)


def _check_config(cfg: TrainConfig) -> None:
    if cfg.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {cfg.epochs}")
    if cfg.save_every < 1:
        raise UserError(f"save_every must be at least 1, got {cfg.save_every}")
    if cfg.batch < 1:
        raise UserError(f"--batch must be at least 1, got {cfg.batch}")
    if cfg.nominal_batch < 0:
        raise UserError(f"--nominal-batch must be at least 1 (or 0: auto), got {cfg.nominal_batch}")
    if cfg.sparsity < 0:
        raise UserError(f"--sparsity must be >= 0, got {cfg.sparsity}")
    if cfg.no_aug_epochs is not None and cfg.no_aug_epochs < 0:
        raise UserError(f"--no-aug-epochs must be >= 0, got {cfg.no_aug_epochs}")
    if cfg.distill_weight < 0:
        raise UserError(f"--distill-weight must be >= 0, got {cfg.distill_weight}")
    if cfg.distill_epochs < 0:
        raise UserError(f"--distill-epochs must be >= 0 (0: every epoch), got {cfg.distill_epochs}")
    if cfg.distill_features < 0:
        raise UserError(f"--distill-features must be >= 0 (0: none), got {cfg.distill_features}")
    if cfg.distill_features and not cfg.teacher:
        raise UserError("--distill-features imitates a teacher's features: give --teacher MODEL too")
    if cfg.distill_epochs and not cfg.teacher:
        raise UserError("--distill-epochs limits the distillation from a teacher: give --teacher MODEL too")
    if cfg.distill_epochs and is_image_folder(cfg.data):
        raise UserError(f"--distill-epochs stops the distillation early, but {cfg.data} is a folder of images "
                        "without labels, where distillation is the whole loss: drop --distill-epochs")
    optimizer_name(cfg.optimizer)
    check_target(cfg.sparsity_target)
    if cfg.sparsity > 0 and cfg.sparsity_target > 0:
        raise UserError("give --sparsity SR (a fixed strength) or --sparsity-target F (a fraction), not both")
    if cfg.sparsity_schedule not in ("constant", "linear"):
        raise UserError(f"--sparsity-schedule must be constant or linear, got {cfg.sparsity_schedule!r}")


def _run_dir(cfg: TrainConfig, d: ddp.Dist) -> Path:
    """The run folder: ``cfg.out`` or a new numbered one, chosen by rank 0 and shared with the others."""
    name = [None]
    if d.main:
        run = Path(cfg.out) if cfg.out else new_run_dir(cfg.project)
        (run / "weights").mkdir(parents=True, exist_ok=True)
        for stale in [*run.glob(".*.tmp"), *(run / "weights").glob(".*.tmp")]:  # from a run killed mid-write
            stale.unlink(missing_ok=True)
        name = [str(run)]
    if d.enabled:
        torch.distributed.broadcast_object_list(name, src=0)
    return Path(name[0])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stop_strong_augmentation(train_ds: Any, loss_fn: Any, epoch: int, log: bool) -> None:
    """The final "no augmentation" epochs: no mosaic, mixup or affine warp; the loss is told (YOLOX: L1 on)."""
    aug = train_ds.augment
    if aug is not None and (aug.mosaic or aug.mixup or aug.degrees or aug.translate or aug.scale or aug.shear
                            or aug.perspective):
        train_ds.augment = dataclasses.replace(aug, mosaic=0.0, mixup=0.0, degrees=0.0, translate=0.0, scale=0.0,
                                               shear=0.0, perspective=0.0)
        if log:
            logger.info(f"epoch {epoch + 1}: mosaic, mixup and affine augmentation off for the last epochs")
    if hasattr(loss_fn, "set_no_aug"):
        loss_fn.set_no_aug(True)
