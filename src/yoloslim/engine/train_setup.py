"""What a training run needs before its first step: data, model, loaders, and the resume state.

Each function takes explicit arguments and is called once, in order, by
:func:`yoloslim.engine.train.train`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from yoloslim.data.class_map import match_classes
from yoloslim.data.dataset import DataSource, DetectionDataset, create_loader, load_data
from yoloslim.engine.ddp import Dist
from yoloslim.engine.train_state import load_state, save_state
from yoloslim.errors import UserError
from yoloslim.log import logger
from yoloslim.models import build_model, check_model_size, model_spec
from yoloslim.models.head_classes import select_classes
from yoloslim.models.io import ModelInfo, load_model, save_model
from yoloslim.models.spec import ArchSpec

STATE_FILE = "last_state.pt"


def find_resume_state(arg: str, project: str | Path = "runs/train") -> Path:
    """The training-state file that ``--resume [ARG]`` means.

    ``ARG`` may be the state file itself, a run folder, or empty for the most recent run under
    ``project``.
    """
    if not arg:
        states = sorted(Path(project).glob(f"*/weights/{STATE_FILE}"), key=lambda p: p.stat().st_mtime)
        if not states:
            raise UserError(f"--resume: no interrupted run under {project}/ (give the run folder)")
        return states[-1]
    p = Path(arg)
    if p.is_dir():
        for cand in (p / "weights" / STATE_FILE, p / STATE_FILE):
            if cand.is_file():
                return cand
        raise UserError(f"--resume: {p} holds no weights/{STATE_FILE} (is it a training run folder?)")
    if not p.is_file():
        raise UserError(f"--resume: {p}: no such run folder or state file")
    return p


def read_resume_state(path: Path) -> dict[str, Any]:
    """Load a training state and check it has what resuming needs."""
    state = load_state(path)
    need = {"config", "hyp", "spec", "names", "model", "ema", "optimizer", "epoch", "rng"}
    if not isinstance(state, dict) or need - set(state):
        raise UserError(f"{path}: not a yoloslim training state (lacks {sorted(need - set(state or {}))})")
    return state


def load_training_data(data: str) -> DataSource:
    """Read the data set and refuse one that cannot train a detector, with a line saying why."""
    if not data:
        raise UserError("give the data set with --data (a data.yaml or a VOC root)")
    source = load_data(data)
    train, val = source.splits.get("train", []), source.splits.get("val", [])
    if not train:
        raise UserError(f"{data}: the train split has no usable images")
    if not val:
        raise UserError(f"{data}: the val split has no usable images (training validates every epoch)")
    if sum(len(s.classes) for s in train) == 0:
        raise UserError(f"{data}: none of the {len(train)} training images has a label; "
                        "check the labels/ folder (YOLO) or Annotations/ (VOC)")
    if not source.names:
        raise UserError(f"{data}: the data set names no classes")
    return source


def initial_model(model_name: str | None, weights: str | None, names: list[str], imgsz: int,
                  class_map: str | None = None) -> tuple[nn.Module, ModelInfo]:
    """The model to start from: a preset with random weights, or a checkpoint's architecture and weights.

    From a checkpoint, the data set's classes are matched to the model's by name (or through
    ``class_map``, see :mod:`yoloslim.data.class_map`): the head keeps the model's rows of the
    matched classes, in the data set's order (fine-tuning a COCO model on a subset shrinks its head
    to the subset), and classes the model does not know start from fresh rows. Names that share
    nothing with the model's, in equal number, are matched by position. A pruned checkpoint is
    trained as it is.
    """
    if (model_name is None) == (weights is None):
        raise UserError("give exactly one of --model NAME or --weights CKPT")
    if model_name is not None:
        if class_map:
            raise UserError("--class-map maps the data set's classes onto those of --weights; a --model "
                            "trained from scratch takes the data set's classes as they are")
        spec = model_spec(model_name, len(names))
        return build_model(spec), ModelInfo(spec, list(names), imgsz, [])
    src, info = load_model(weights)
    match = match_classes(info.names, names, class_map, allow_new=True, nc=info.spec.nc)
    if match.identity:
        return src, ModelInfo(info.spec, list(names), imgsz, info.history)
    model = select_classes(src, match.ids)
    logger.info(f"{weights}: the head keeps the rows of {match.describe()}")
    return model, ModelInfo(model.spec, list(names), imgsz, info.history)


def make_loaders(source: DataSource, imgsz: int, batch: int, workers: int, seed: int, augment: Any,
                 cache: bool, d: Dist) -> tuple[DataLoader, DetectionDataset, DistributedSampler | None,
                                                DataLoader | None]:
    """Training loader (shuffled per epoch, sharded across processes) and, on rank 0, the val loader.

    Args:
        source: the data set.
        imgsz: image size.
        batch: batch size over all processes (each takes ``batch / world_size``).
        workers: loader worker processes.
        seed: seed of shuffling and augmentation.
        augment: an ``AugmentConfig``, or None for plain letterboxing.
        cache: keep images in RAM.
        d: the process layout.
    """
    if batch % d.world_size:
        raise UserError(f"--batch {batch} must be a multiple of the number of processes ({d.world_size})")
    per_rank = batch // d.world_size
    train_ds = DetectionDataset(source.splits["train"], imgsz, augment=augment, cache=cache, seed=seed)
    sampler = None
    if d.enabled:
        sampler = DistributedSampler(train_ds, num_replicas=d.world_size, rank=d.rank, shuffle=True,
                                     seed=seed)
    train_loader = create_loader(train_ds, per_rank, shuffle=True, workers=workers, seed=seed,
                                 sampler=sampler)
    val_loader = None
    if d.main:
        val_ds = DetectionDataset(source.splits["val"], imgsz, augment=None, cache=cache, seed=seed)
        val_loader = create_loader(val_ds, per_rank * 2, shuffle=False, workers=workers, seed=seed)
    return train_loader, train_ds, sampler, val_loader


def save_epoch(weights_dir: Path, ema_model: nn.Module, info: ModelInfo, state: dict[str, Any] | None,
               best: bool) -> None:
    """Write ``last.safetensors`` and the resume state (when ``state`` is given) and ``best.safetensors``.

    The model files hold the EMA weights. Each file is written to a temporary name and renamed, so
    an interruption leaves the previous good files in place.
    """
    if state is not None:
        save_model(weights_dir / "last.safetensors", ema_model, info)
    if best:
        save_model(weights_dir / "best.safetensors", ema_model, info)
    if state is not None:
        save_state(weights_dir / STATE_FILE, state)


def spec_of(state: dict[str, Any]) -> tuple[ArchSpec, list[str], list[dict[str, Any]]]:
    """Architecture, class names and history recorded in a training state."""
    spec = ArchSpec.from_json(state["spec"])
    check_model_size(spec, "training state")
    return spec, list(state["names"]), list(state.get("history", []))
