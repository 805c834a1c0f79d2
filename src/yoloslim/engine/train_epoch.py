"""One epoch of training and what follows it: the step, validation, logging and checkpoints.

Called by :func:`yoloslim.engine.train.train`, in this order, once per epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm import tqdm

from yoloslim.engine import ddp
from yoloslim.engine.ema import ModelEMA
from yoloslim.engine.optim import lr_factor, set_epoch_lr, warmup, warmup_accumulate
from yoloslim.engine.run_files import ResultsCSV, Scalars, gamma_histogram, rng_state, set_rng_state
from yoloslim.engine.train_setup import STATE_FILE, save_epoch
from yoloslim.errors import UserError
from yoloslim.hyp import Hyp
from yoloslim.log import logger
from yoloslim.models.decode import preprocess
from yoloslim.models.io import ModelInfo

if TYPE_CHECKING:
    from yoloslim.engine.train import TrainConfig


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says how to go on (the command line prints it, exit 130)."""

    @classmethod
    def of_run(cls, run_dir: Path | None) -> TrainingInterrupted:
        if run_dir is None:
            return cls("interrupted before training started; nothing was written")
        if not (run_dir / "weights" / STATE_FILE).is_file():
            return cls(f"interrupted before the first checkpoint of {run_dir} was written; nothing to resume, "
                       "start the run again")
        return cls(f"interrupted; the last saved epoch is kept: resume with "
                   f"`yoloslim train --resume {shlex.quote(str(run_dir))}`")


@dataclass
class Progress:
    """Where a run stands: the next epoch, the best fitness so far and its epoch, epochs without progress."""

    start_epoch: int = 0
    best_fitness: float = -1.0
    best_epoch: int = -1
    stale: int = 0


@dataclass
class Parts:
    """The objects one training step touches."""

    model: nn.Module  # the bare model
    net: nn.Module  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: ModelEMA
    loss_fn: Any
    sparsity: Any  # BNSparsity or None
    distill: Any = None  # DistillLoss or None


def train_one_epoch(parts: Parts, loader, epoch: int, cfg: TrainConfig, hyp: Hyp, n_warmup: int, d: ddp.Dist,
                    device: torch.device, run_dir: Path) -> dict[str, float]:
    """One pass over the training data; returns the mean loss items."""
    parts.net.train()
    nb = len(loader)
    factor = lr_factor(epoch, cfg.epochs, hyp.lrf, cfg.cos_lr)
    set_epoch_lr(parts.optimizer, factor)
    spec = parts.model.spec
    sums: dict[str, float] = {}
    pending = 0  # backward passes since the last optimizer step
    distill = parts.distill if not cfg.distill_epochs or epoch < cfg.distill_epochs else None  # early-stopped
    bar = tqdm(loader, total=nb, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not d.main, leave=True,
               dynamic_ncols=True)
    for i, (imgs, targets, _paths, _infos) in enumerate(bar):
        it = i + nb * epoch
        accumulate = warmup_accumulate(it, n_warmup, cfg.nominal_batch, cfg.batch)
        if it <= n_warmup and n_warmup:
            warmup(parts.optimizer, it, n_warmup, factor, hyp.momentum, hyp.warmup_momentum,
                   hyp.warmup_bias_lr)
        x = preprocess(imgs.to(device, non_blocking=True), spec)  # (b, 3, S, S) float
        with amp_autocast(device):
            raw = parts.net(x)
            loss, items = (parts.loss_fn(raw, targets.to(device)) if distill is None
                           else distill.combine(raw, x, targets.to(device), parts.loss_fn))
        if ddp.any_flag(not bool(torch.isfinite(loss)), d, device):
            raise _diverged(f"the loss became {float(loss.detach())}", epoch, i, run_dir)
        if d.enabled:
            loss = loss * d.world_size  # DDP averages gradients over processes; the loss sums over images
        parts.scaler.scale(loss).backward()
        pending += 1
        if pending >= accumulate or i == nb - 1:
            optimizer_step(parts, epoch, cfg.epochs, pending)
            pending = 0
        for k, v in items.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        means = {k: v / (i + 1) for k, v in sums.items()}
        bar.set_postfix_str(" ".join(f"{k} {v:.4f}" for k, v in means.items()) + f" objs {len(targets)}")
    bar.close()
    return {k: v / max(nb, 1) for k, v in sums.items()}


def make_scaler(device: torch.device) -> torch.amp.GradScaler:
    """The AMP gradient scaler: enabled on CUDA (float16 gradients need it), a no-op elsewhere."""
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda")


def amp_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass and the loss on CUDA; float32 (a null context) elsewhere."""
    return torch.autocast("cuda") if device.type == "cuda" else contextlib.nullcontext()


def optimizer_step(parts: Parts, epoch: int, epochs: int, n_backward: int) -> None:
    """Unscale, add the sparsity sub-gradient, clip, step, and update the EMA.

    The L1 sub-gradient ``sr·sign(γ)`` is added once per backward pass since the last step (γ does
    not change in between), as if it were added right after each ``backward()``, and after
    unscaling so that AMP does not change its strength.
    """
    parts.scaler.unscale_(parts.optimizer)
    if parts.sparsity is not None:
        for _ in range(n_backward):
            parts.sparsity.apply(parts.model, epoch, epochs)
    torch.nn.utils.clip_grad_norm_(parts.model.parameters(), max_norm=10.0)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
    parts.ema.update(parts.model)
    if parts.sparsity is not None:
        parts.sparsity.hold_zeros(parts.ema.ema)


def end_of_epoch(parts: Parts, val_loader, names: list[str], epoch: int, cfg: TrainConfig,
                 train_losses: dict[str, float], validate: bool, device: torch.device, csv: ResultsCSV,
                 scalars: Scalars, run_dir: Path, seconds: float) -> dict[str, Any]:
    """Rank 0: validate the EMA model, check the weights, log, write results.csv and the γ histogram."""
    # NaN or inf weights reach the EMA too: one check of all its values
    values = [t.flatten() for t in parts.ema.ema.state_dict().values() if t.is_floating_point()]
    if not bool(torch.isfinite(torch.cat(values)).all()):
        raise _diverged("the weights became NaN or infinite", epoch, None, run_dir)
    row: dict[str, Any] = {"epoch": epoch + 1, **{f"train/{k}": v for k, v in train_losses.items()}}
    # the same columns every epoch (blank when not validated), so that results.csv is appended to
    row.update(dict.fromkeys(["metrics/precision", "metrics/recall", "metrics/mAP50", "metrics/mAP50-95",
                              *(f"val/{k}" for k in train_losses)], ""))
    metrics: dict[str, Any] = {}
    if validate:
        from yoloslim.engine.evaluate import evaluate

        result = evaluate(parts.ema.ema, val_loader, names, device=str(device), loss_fn=parts.loss_fn)
        m = result.metrics
        metrics = {"precision": m.precision, "recall": m.recall, "map50": m.map50, "map": m.map,
                   "fitness": 0.1 * m.map50 + 0.9 * m.map}
        row.update({"metrics/precision": m.precision, "metrics/recall": m.recall, "metrics/mAP50": m.map50,
                    "metrics/mAP50-95": m.map, **{f"val/{k}": float(v) for k, v in result.losses.items()}})
    row.update({f"lr/{g}": pg["lr"] for g, pg in zip(("bias", "weight", "bn"), parts.optimizer.param_groups[:3],
                                                        strict=True)})
    if parts.sparsity is not None:
        stats = parts.sparsity.gamma_stats(parts.model)
        row["sparsity/gamma_below_1e-2"] = stats.fraction_below
        metrics["gamma_below_1e-2"] = stats.fraction_below
        gamma_histogram(stats.values, run_dir / "gamma" / f"epoch{epoch + 1:03d}.png", epoch + 1)
        scalars.histogram("sparsity/gamma", stats.values, epoch + 1)
    csv.add(row)
    scalars.add({k: v for k, v in row.items() if k != "epoch" and v != ""}, epoch + 1)
    parts_txt = [" ".join(f"{k} {v:.4f}" for k, v in train_losses.items())]
    if validate:
        parts_txt.append(f"P {metrics['precision']:.3f} R {metrics['recall']:.3f} "
                         f"mAP50 {metrics['map50']:.3f} mAP50-95 {metrics['map']:.3f}")
    if parts.sparsity is not None:
        parts_txt.append(f"γ<1e-2 {metrics['gamma_below_1e-2']:.1%}")
    logger.info(f"epoch {epoch + 1}/{cfg.epochs} ({seconds:.1f}s): " + " | ".join(parts_txt))
    return metrics


def save_checkpoints(parts: Parts, cfg: TrainConfig, hyp: Hyp, info: ModelInfo, event: str, epoch: int,
                     metrics: dict[str, Any], progress: Progress, run_dir: Path) -> bool:
    """Rank 0: track the best fitness, write the model files and the resume state; True = stop early."""
    improved = "fitness" in metrics and metrics["fitness"] > progress.best_fitness
    if improved:
        progress.best_fitness, progress.best_epoch, progress.stale = metrics["fitness"], epoch, 0
    elif "fitness" in metrics:
        progress.stale += 1
    stop = progress.stale >= cfg.patience
    if stop:
        logger.info(f"no improvement for {cfg.patience} epochs: stopping early at epoch {epoch + 1}")
    details = {k: round(metrics[k], 5) for k in ("map50", "map") if k in metrics}
    if cfg.sparsity:
        details["sparsity"] = cfg.sparsity
    if cfg.teacher:
        details.update(teacher=cfg.teacher, distill_weight=cfg.distill_weight,
                       **({"distill_epochs": cfg.distill_epochs} if cfg.distill_epochs else {}),
                       **({"distill_features": cfg.distill_features} if cfg.distill_features else {}))
    if cfg.sparsity_target:
        details["sparsity_target"] = cfg.sparsity_target
    epoch_info = info.with_event(event, epochs=epoch + 1, data=str(cfg.data), imgsz=cfg.imgsz, **details)
    save_last = stop or (epoch + 1) % cfg.save_every == 0 or epoch == cfg.epochs - 1
    if save_last or improved:
        progress.start_epoch = epoch + 1
        state = training_state(parts, cfg, hyp, info, progress) if save_last else None
        save_epoch(run_dir / "weights", parts.ema.ema, epoch_info, state,
                   best=improved or progress.best_epoch < 0)
    return stop


def training_state(parts: Parts, cfg: TrainConfig, hyp: Hyp, info: ModelInfo,
                   progress: Progress) -> dict[str, Any]:
    """Everything ``--resume`` needs, as plain data (tensors, numbers, strings, lists, dicts)."""
    return {
        "config": dataclasses.asdict(cfg), "hyp": hyp.to_dict(), "spec": info.spec.to_json(),
        "names": list(info.names), "history": list(info.history),
        "model": {k: v.detach().cpu().clone() for k, v in parts.model.state_dict().items()},
        "ema": parts.ema.state_dict(), "optimizer": parts.optimizer.state_dict(),
        "scaler": parts.scaler.state_dict() if parts.scaler.is_enabled() else {},
        "epoch": progress.start_epoch, "best_fitness": progress.best_fitness,
        "best_epoch": progress.best_epoch, "stale": progress.stale, "rng": rng_state(),
        **({"feature_adapters": {k: v.detach().cpu().clone() for k, v in imitation.state_dict().items()}}
           if (imitation := getattr(parts.distill, "imitation", None)) is not None else {}),
    }


def restore_state(parts: Parts, state: dict[str, Any]) -> Progress:
    """Load weights, EMA, optimizer, scaler and RNG from a resume state; returns where to go on."""
    parts.model.load_state_dict(state["model"])
    parts.ema.load_state_dict(state["ema"])
    parts.optimizer.load_state_dict(state["optimizer"])
    imitation = getattr(parts.distill, "imitation", None)
    if imitation is not None:
        imitation.load_state_dict(state["feature_adapters"])
    if state.get("scaler"):
        parts.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return Progress(int(state["epoch"]), float(state["best_fitness"]), int(state["best_epoch"]),
                    int(state.get("stale", 0)))


def _diverged(what: str, epoch: int, batch: int | None, run_dir: Path) -> TrainingDiverged:
    where = f"epoch {epoch + 1}" + (f", batch {batch + 1}" if batch is not None else "")
    last = run_dir / "weights" / "last.safetensors"
    kept = (f"the last good checkpoint is {last}" if last.is_file()
            else "no epoch had finished, so no checkpoint was written")
    return TrainingDiverged(f"training stopped: {what} at {where}; {kept}. "
                            "Lower lr0 (--hyp FILE) or check the labels")
