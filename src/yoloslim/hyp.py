"""Training hyper-parameters: the reference's defaults for training from scratch (hyp.scratch-low).

A hyp YAML file is flat, as the reference's: optimisation and loss keys go to :class:`Hyp`,
augmentation keys (``hsv_h``, ``mosaic`` ...) to :class:`yoloslim.data.augment.AugmentConfig`,
which owns their defaults. A key that is neither is refused with the closest known key.

A family whose recipe differs from YOLOv5's says how in :data:`FAMILY_DEFAULTS`, the one place
per-family training defaults live: its hyp keys replace the dataclass defaults (a hyp file and
overrides still win), and its ``no_aug_epochs`` is the training run's default for that setting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yoloslim.config import from_dict, read_yaml_mapping
from yoloslim.errors import UserError

if TYPE_CHECKING:
    from yoloslim.data.augment import AugmentConfig


def _default_augment() -> AugmentConfig:
    from yoloslim.data.augment import AugmentConfig

    return AugmentConfig()


@dataclass(frozen=True)
class FamilyDefaults:
    """What a family's training recipe changes from the YOLOv5 one.

    Attributes:
        hyp: :class:`Hyp` (or augmentation) keys and their values for the family.
        no_aug_epochs: the last this many epochs train without mosaic, mixup and affine warps
            (:attr:`yoloslim.engine.train.TrainConfig.no_aug_epochs`).
        min_warmup_iters: the warm-up lasts at least this many iterations (YOLOv5's floor of 100;
            ultralytics 8.x warms up for exactly ``warmup_epochs`` epochs), see
            :func:`yoloslim.engine.optim.warmup_iterations`.
    """

    hyp: Mapping[str, Any] = field(default_factory=dict)
    no_aug_epochs: int = 0
    min_warmup_iters: int = 100


# family name (ArchSpec.family) -> its defaults; a family not listed trains with YOLOv5's.
FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {
    # ultralytics' YOLOv8 / YOLO11 recipe: loss gains box 7.5, cls 0.5, dfl 1.5; close_mosaic 10; warm-up of
    # warmup_epochs without YOLOv5's 100-iteration floor (8.4.190: 60 iterations for 3 epochs of 20 batches)
    "yolov8": FamilyDefaults(hyp={"box": 7.5, "cls": 0.5, "dfl": 1.5}, no_aug_epochs=10, min_warmup_iters=0),
}


# Fine-tuning a pruned model (its history has a cut) starts without warm-up: the weights are trained,
# and ramping the learning rate up from 0 spent 3 of the 8 epochs the demo gives the recovery. On the
# demo's YOLOv5n cut to 40 % of its FLOPs, 8 distilled epochs reached mAP@.5:.95 0.300 without warm-up
# against 0.275 with YOLOv5's 3 epochs (docs/BENCHMARKS.md, "Recovering a pruned model").
PRUNED_HYP: Mapping[str, Any] = {"warmup_epochs": 0.0}


def family_defaults(family: str | None) -> FamilyDefaults:
    """The training defaults of ``family`` (YOLOv5's for a family without its own, or None)."""
    return FAMILY_DEFAULTS.get(family or "", FamilyDefaults())


@dataclass
class Hyp:
    """Optimiser, schedule and loss settings (defaults: YOLOv5 hyp.scratch-low.yaml).

    Attributes:
        lr0: initial learning rate (SGD).
        lrf: final learning rate as a fraction of ``lr0``.
        momentum: SGD momentum (Nesterov).
        weight_decay: L2 on conv and linear weights (not on BN weights or biases).
        warmup_epochs: warm-up length in epochs (at least 100 iterations for the families with YOLOv5's
            floor, :attr:`FamilyDefaults.min_warmup_iters`; 0 disables warm-up).
        warmup_momentum: momentum at the start of warm-up.
        warmup_bias_lr: bias learning rate at the start of warm-up.
        box: box loss gain.
        cls: class loss gain.
        dfl: distribution focal loss gain (YOLOv8 / YOLO11 only).
        cls_pw: class BCE positive weight.
        obj: objectness loss gain.
        obj_pw: objectness BCE positive weight.
        iou_t: IoU training threshold (kept for compatibility with reference hyp files; unused).
        anchor_t: anchor-target shape-ratio threshold.
        fl_gamma: focal-loss gamma (0 = plain BCE).
        label_smoothing: class label smoothing epsilon.
        augment: augmentation settings (keys of ``AugmentConfig``, flat in the YAML file).
    """

    lr0: float = 0.01
    lrf: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 0.0005
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    box: float = 0.05
    cls: float = 0.5
    dfl: float = 1.5
    cls_pw: float = 1.0
    obj: float = 1.0
    obj_pw: float = 1.0
    iou_t: float = 0.2
    anchor_t: float = 4.0
    fl_gamma: float = 0.0
    label_smoothing: float = 0.0
    augment: AugmentConfig = field(default_factory=_default_augment)

    def to_dict(self) -> dict[str, Any]:
        """Flat dict, as a hyp YAML file holds it."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "augment"}
        out.update(dataclasses.asdict(self.augment))
        return out


def hyp_from_dict(data: dict[str, Any], source: str = "hyp") -> Hyp:
    """Build a :class:`Hyp` from a flat dict; augmentation keys go to ``AugmentConfig``."""
    from yoloslim.data.augment import AugmentConfig

    own = {f.name for f in dataclasses.fields(Hyp)} - {"augment"}
    aug = {f.name for f in dataclasses.fields(AugmentConfig)}
    for key in data:
        if key not in own and key not in aug:
            close = get_close_matches(key, sorted(own | aug), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{source}: unknown key '{key}'{hint}")
    hyp = from_dict(Hyp, {k: v for k, v in data.items() if k in own}, source=source)
    hyp.augment = from_dict(AugmentConfig, {k: v for k, v in data.items() if k in aug}, source=source)
    return hyp


def load_hyp(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
             family: str | None = None, pruned: bool = False) -> Hyp:
    """Defaults (``family``'s, see :data:`FAMILY_DEFAULTS`; with ``pruned``, a pruned model's fine-tune,
    :data:`PRUNED_HYP` too), updated from a flat YAML file, then from ``overrides``; unknown keys are
    refused."""
    data = dict(family_defaults(family).hyp)
    if pruned:
        data.update(PRUNED_HYP)
    data.update(read_yaml_mapping(path, "hyp"))
    data.update(overrides or {})
    return hyp_from_dict(data, source=str(path) if path else "hyp")
