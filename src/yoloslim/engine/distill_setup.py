"""What distillation needs before training: the teacher, checked against the student, and label-free data.

Label-free recovery trains on a folder of images without labels: the teacher's outputs are the only
target. Such a folder is split into train and a held-out val part (every tenth image); the val
images are labelled once with the teacher's detections, so that validation scores how well the
student agrees with the teacher (mAP against the teacher as pseudo ground truth), not its accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from yoloslim.data.dataset import DetectionDataset, create_loader, scale_boxes_back
from yoloslim.data.images import image_size, list_images
from yoloslim.data.source import DataSource, Problem, Sample
from yoloslim.errors import UserError
from yoloslim.models.decode import Decoder, decode_style, preprocess
from yoloslim.models.io import ModelInfo, load_model
from yoloslim.models.nms import non_max_suppression
from yoloslim.models.spec import ArchSpec

VAL_EVERY = 10  # label-free: every tenth image is held out for validation
PSEUDO_CONF = 0.25  # the teacher's detections at this score or above are the val images' pseudo labels
PSEUDO_IOU = 0.45


@dataclass
class Teacher:
    """The teacher model, what its file says about it, and the file."""

    model: nn.Module
    info: ModelInfo
    path: str


def load_teacher(path: str, device: torch.device) -> Teacher:
    """Load the teacher's model file onto ``device`` in eval mode, its parameters frozen."""
    if not Path(path).is_file():
        raise UserError(f"--teacher {path}: no such model file")
    model, info = load_model(path, device)
    return Teacher(model.eval().requires_grad_(False), info, path)


def check_teacher(teacher: ArchSpec, student: ArchSpec, path: str) -> None:
    """Refuse a teacher whose outputs do not line up with the student's, with one line saying what differs.

    The family, class count, strides, anchors, decode style and input convention must be equal: the
    student learns the teacher's raw outputs prior by prior, on the same input.
    """
    checks = (
        ("family", teacher.family, student.family),
        ("class count", teacher.nc, student.nc),
        ("strides", list(teacher.strides), list(student.strides)),
        ("anchors", teacher.anchors, student.anchors),
        ("box decoding", decode_style(teacher), decode_style(student)),
        ("input (BGR, scale)", (teacher.input_bgr, teacher.input_scale), (student.input_bgr, student.input_scale)),
    )
    for what, t, s in checks:
        if t != s:
            raise UserError(f"--teacher {path}: its {what} ({t}) differs from the student's ({s}); the teacher "
                            f"must be a {student.family} model with the same classes and head, normally the "
                            "unpruned model the student was pruned from")


def is_image_folder(data: str) -> bool:
    """True when ``data`` is a folder of images that is neither a YOLO (data.yaml) nor a VOC data set."""
    p = Path(data)
    return (bool(data) and p.is_dir() and not (p / "data.yaml").is_file() and not (p / "Annotations").is_dir()
            and bool(list_images(p)))


def image_folder_source(data: str, teacher: Teacher | None) -> DataSource:
    """A folder of unlabelled images as a data set with the teacher's classes: train, and every tenth image as val.

    Raises:
        UserError: no teacher, or fewer than two readable images.
    """
    if teacher is None:
        raise UserError(f"{data}: a folder of images without labels (no data.yaml, no Annotations/) trains "
                        "by distillation alone: give --teacher MODEL (or a labelled data set)")
    samples, problems = [], []
    for path in list_images(Path(data)):
        size = image_size(path)
        if size is None:
            problems.append(Problem(path, "unreadable image (skipped)"))
            continue
        samples.append(Sample.make(path, [], [], size[0], size[1]))
    if len(samples) < 2:
        raise UserError(f"{data}: label-free training needs at least 2 readable images, found {len(samples)}")
    val = samples[VAL_EVERY - 1::VAL_EVERY] or samples[-1:]
    held = {id(s) for s in val}
    train = [s for s in samples if id(s) not in held]
    return DataSource(list(teacher.info.names), {"train": train, "val": val}, Path(data), problems, fmt="images",
                      backgrounds={"train": len(train), "val": len(val)})


@torch.no_grad()
def teacher_labels(teacher: Teacher, samples: list[Sample], imgsz: int, device: torch.device,
                   batch: int = 8) -> list[Sample]:
    """The samples with the teacher's detections (score ≥ ``PSEUDO_CONF``, after NMS) as their boxes."""
    spec = teacher.info.spec
    decoder = Decoder(spec).to(device)
    loader = create_loader(DetectionDataset(samples, imgsz, augment=None), batch, shuffle=False, workers=0)
    by_path = {str(s.path): s for s in samples}
    out = []
    for imgs, _targets, paths, infos in loader:
        raw = teacher.model(preprocess(imgs.to(device), spec))
        dets = non_max_suppression(decoder(raw), conf_thres=PSEUDO_CONF, iou_thres=PSEUDO_IOU)
        for det, path, info in zip(dets, paths, infos, strict=True):
            s = by_path[path]
            det = det.float().cpu().numpy()
            out.append(Sample.make(s.path, scale_boxes_back(det[:, :4], info), det[:, 5], s.width, s.height))
    return out
