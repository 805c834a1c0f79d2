"""``yoloslim train``: train, sparsity-train or fine-tune a detector, and print what came of it."""

from __future__ import annotations

import os
from typing import Any

from yoloslim.engine.train import TrainConfig, TrainResult
from yoloslim.engine.train import train as run_training
from yoloslim.errors import UserError
from yoloslim.models.io import check_writable
from yoloslim.workflows.report import table, write_json

# the fraction ``--sparsity auto`` brings to 0 when no ``--sparsity-target`` is given
DEFAULT_SPARSITY_TARGET = 0.5


def train(data: str | None = None, model: str | None = None, weights: str | None = None,
          epochs: int | None = None, batch: int | None = None, imgsz: int | None = None,
          optimizer: str = "auto", sparsity: float | str = 0.0, sparsity_target: float | None = None,
          sparsity_schedule: str = "constant", sparsity_bias: bool = False,
          hyp: str | None = None, cos_lr: bool = False, workers: int = 2, seed: int = 0, out: str | None = None,
          resume: str | None = None, device: str | None = None, patience: int = 100, cache: bool = False,
          no_augment: bool = False, no_aug_epochs: int | None = None, nominal_batch: int = 0,
          val_every_epoch: bool = True, save_every: int = 1, json_file: str | None = None, class_map: str | None = None,
          no_plots: bool = False, teacher: str | None = None, distill_weight: float | None = None,
          distill_epochs: int = 0, distill_features: float = 0.0) -> TrainResult:
    """Run one training (see :class:`yoloslim.engine.train.TrainConfig` for the arguments).

    ``resume`` continues an interrupted run (its folder or state file; "" for the latest) with the
    settings it was started with; giving one of those settings too is refused rather than ignored.
    ``epochs``, ``batch`` and ``imgsz`` None take TrainConfig's defaults. ``device`` None picks CUDA
    when available (:func:`yoloslim.device.default_device`). ``distill_weight`` None takes TrainConfig's default;
    it, ``distill_epochs`` and ``distill_features`` need ``teacher``. ``sparsity="auto"`` (or a
    ``sparsity_target``) brings ``sparsity_target`` (default :data:`DEFAULT_SPARSITY_TARGET`) of the prunable
    γ to 0 by the end.
    """
    if resume is not None:
        _refuse_new_settings(data=data, model=model, weights=weights, hyp=hyp, epochs=epochs, batch=batch,
                             imgsz=imgsz, class_map=class_map, teacher=teacher, distill_weight=distill_weight,
                             distill_epochs=distill_epochs or None, distill_features=distill_features or None)
    else:
        if not data:
            raise UserError("give the data set with --data (a data.yaml or a VOC root)")
        if (model is None) == (weights is None):
            raise UserError("give exactly one of --model NAME (from scratch) or --weights CKPT")
    if distill_weight is not None and not teacher and resume is None:
        raise UserError("--distill-weight weighs the distillation from a teacher: give --teacher MODEL too")
    if sparsity == "auto" or sparsity_target is not None:
        if sparsity not in ("auto", 0, 0.0):
            raise UserError("give --sparsity SR (a fixed strength) or --sparsity-target F (a fraction), not both")
        sparsity, sparsity_target = 0.0, DEFAULT_SPARSITY_TARGET if sparsity_target is None else sparsity_target
    check_writable(out or (TrainConfig.project if resume is None else None), "--out", folder=True)
    check_writable(json_file, "--json")
    sizes = {k: v for k, v in {"epochs": epochs, "batch": batch, "imgsz": imgsz,
                               "distill_weight": distill_weight}.items() if v is not None}
    cfg = TrainConfig(data=data or "", model=model, weights=weights, **sizes,
                      device=device or "", workers=workers, out=out, resume=resume, seed=seed,
                      hyp=hyp, cos_lr=cos_lr, optimizer=optimizer, sparsity=float(sparsity),
                      sparsity_target=sparsity_target or 0.0, sparsity_schedule=sparsity_schedule,
                      sparsity_bias=sparsity_bias, patience=patience, augment=not no_augment, cache=cache,
                      no_aug_epochs=no_aug_epochs, teacher=teacher, distill_epochs=distill_epochs,
                      distill_features=distill_features,
                      nominal_batch=nominal_batch, val_every_epoch=val_every_epoch, save_every=save_every,
                      class_map=class_map, plots=not no_plots)
    result = run_training(cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        print(summary_table(result))
        if json_file:
            write_json(json_file, summary_dict(result))
    return result


def _refuse_new_settings(**given: Any) -> None:
    """``--resume`` with a setting of the run (``--epochs 200``, ...): refuse, saying what to do instead."""
    named = [f"--{k}" for k, v in given.items() if v is not None]
    if named:
        raise UserError(f"--resume continues a run with the settings it was started with, so {', '.join(named)} "
                        "cannot change; to train on with other settings, start a new run from its weights: "
                        "--weights RUN/weights/last.safetensors")


def summary_table(result: TrainResult) -> str:
    """The final numbers and files of a run, as a table."""
    m = result.metrics
    labels = (("best epoch", "best_epoch"), ("precision", "precision"), ("recall", "recall"),
              ("mAP@.5", "map50"), ("mAP@.5:.95", "map"), ("BN γ < 1e-2", "gamma_below_1e-2"))
    rows: list[list[Any]] = [[label, m[key]] for label, key in labels if key in m]
    rows += [["best", str(result.best)], ["last", str(result.last)], ["run folder", str(result.run_dir)]]
    return table(["", "final epoch"], rows)


def summary_dict(result: TrainResult) -> dict[str, Any]:
    return {"best": str(result.best), "last": str(result.last), "run_dir": str(result.run_dir),
            **result.metrics}

