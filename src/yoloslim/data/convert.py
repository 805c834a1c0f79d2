"""VOC, COCO json, labelme and Oxford Hand -> YOLO txt: ``images/{split}/``, ``labels/{split}/`` and a
``data.yaml``, in one call.

Each format's reader gives a :class:`~yoloslim.data.source.DataSource`; :func:`write_yolo` writes any
of them. Formats without splits of their own (one COCO file, a labelme folder) are split train/val
with :func:`~yoloslim.data.voc.split_ids`, as VOC without ``ImageSets``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from yoloslim.data.coco import load_coco
from yoloslim.data.labelme import load_labelme
from yoloslim.data.oxford_hand import load_oxford_hand
from yoloslim.data.source import DataSource, Sample, warn_problems
from yoloslim.data.voc import load_voc, read_names_file, split_ids
from yoloslim.data.yolo import write_data_yaml, write_labels
from yoloslim.errors import UserError


@dataclass
class ConvertResult:
    """What a conversion wrote.

    Attributes:
        data_yaml: the written ``data.yaml``.
        images: images per split.
        boxes: boxes written per split.
        difficult_dropped: VOC ``difficult`` / COCO ``iscrowd`` objects left out (0 with ``keep_difficult``).
        problems: problems met while reading the VOC data set (listed by ``yoloslim data check``).
        names: the class names, in index order.
    """

    data_yaml: Path
    images: dict[str, int] = field(default_factory=dict)
    boxes: dict[str, int] = field(default_factory=dict)
    difficult_dropped: int = 0
    problems: int = 0
    names: list[str] = field(default_factory=list)


def convert_voc(voc_root: str | Path, out_dir: str | Path, val_ratio: float | None = None,
                classes_file: str | Path | None = None, seed: int = 0, keep_difficult: bool = False,
                progress: bool = True) -> ConvertResult:
    """Convert a VOC data set to YOLO txt with a deterministic train/val split.

    Args:
        voc_root: a VOC folder (``Annotations/``, ``JPEGImages/``) or a VOCdevkit of several.
        out_dir: a new or empty folder for ``images/``, ``labels/`` and ``data.yaml``.
        val_ratio: share of the images in val, split with ``seed``; ``None`` uses
            ``ImageSets/Main/{train,val}.txt`` when present, else 0.2. ``test.txt`` always becomes ``test``.
        classes_file: class names, one per line (objects of other classes are left out); default
            ``classes.txt`` in the VOC root, else every name in the annotations, sorted.
        seed: seed of the split.
        keep_difficult: also write objects marked ``difficult`` (left out by default, as the usual
            VOC -> YOLO scripts do, since YOLO txt cannot mark them).
        progress: show a progress bar.
    """
    _check_out(out_dir)
    if val_ratio is not None and not 0 <= val_ratio < 1:
        raise UserError(f"--val-ratio must be in [0, 1), got {val_ratio}")
    source = load_voc(voc_root, names_file=classes_file, val_ratio=val_ratio, seed=seed)
    return write_yolo(source, out_dir, str(voc_root), keep_difficult=keep_difficult, progress=progress)


def convert_coco(json_file: str | Path, images_dir: str | Path, out_dir: str | Path, val_ratio: float = 0.2,
                 classes_file: str | Path | None = None, seed: int = 0, keep_difficult: bool = False,
                 progress: bool = True) -> ConvertResult:
    """Convert one COCO instances file (and its image folder) to YOLO txt, split train/val with ``val_ratio``.

    ``classes_file`` keeps only those category names (in its order); ``keep_difficult`` also writes
    ``iscrowd`` boxes (left out by default: YOLO txt cannot mark them).
    """
    _check_out(out_dir)
    names = read_names_file(Path(classes_file)) if classes_file else None
    part = load_coco(json_file, images_dir, names=names)
    source = _split_source(part.names, part.samples, Path(images_dir), "coco", val_ratio, seed)
    source.problems = part.problems
    return write_yolo(source, out_dir, str(json_file), keep_difficult=keep_difficult, progress=progress)


def convert_labelme(folder: str | Path, out_dir: str | Path, val_ratio: float = 0.2,
                    classes_file: str | Path | None = None, seed: int = 0, progress: bool = True) -> ConvertResult:
    """Convert a folder of labelme json files (and their images) to YOLO txt, split train/val with ``val_ratio``."""
    _check_out(out_dir)
    names, samples, problems = load_labelme(folder, names_file=classes_file)
    source = _split_source(names, samples, Path(folder), "labelme", val_ratio, seed)
    source.problems = problems
    return write_yolo(source, out_dir, str(folder), progress=progress)


def convert_oxford_hand(root: str | Path, out_dir: str | Path, progress: bool = True) -> ConvertResult:
    """Convert the Oxford Hand data set to YOLO txt, keeping its training / validation / test split."""
    _check_out(out_dir)
    return write_yolo(load_oxford_hand(root), out_dir, str(root), progress=progress)


def _check_out(out_dir: str | Path) -> None:
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: folder is not empty; choose a new --out")


def _split_source(names: list[str], samples: list[Sample], root: Path, fmt: str, val_ratio: float,
                  seed: int) -> DataSource:
    """One pool of samples split train/val by :func:`split_ids` on their image paths."""
    if not 0 <= val_ratio < 1:
        raise UserError(f"--val-ratio must be in [0, 1), got {val_ratio}")
    by_path = {str(s.path): s for s in samples}
    train, val = split_ids(list(by_path), val_ratio, seed)
    splits = {"train": [by_path[p] for p in train], "val": [by_path[p] for p in val]}
    return DataSource(names=names, splits=splits, root=root, fmt=fmt,
                      backgrounds={k: sum(len(s.classes) == 0 for s in v) for k, v in splits.items()})


def write_yolo(source: DataSource, out_dir: str | Path, what: str, keep_difficult: bool = False,
               progress: bool = True) -> ConvertResult:
    """Copy a data set's images into ``out_dir/images/{split}/`` and write its labels and ``data.yaml``.

    Args:
        source: the data set as read.
        out_dir: a new or empty folder.
        what: the input, named in the warning that lists the problems.
        keep_difficult: also write ignored objects (VOC difficult, COCO iscrowd).
        progress: show a progress bar.
    """
    out = Path(out_dir)
    _check_out(out)
    warn_problems(source, what)
    result = ConvertResult(data_yaml=out / "data.yaml", problems=len(source.problems), names=source.names)
    used: set[str] = set()
    todo = [(split, s) for split, samples in source.splits.items() for s in samples]
    for split, s in tqdm(todo, desc="converting", unit="img", disable=not progress, leave=False):
        name = s.path.name
        if name.lower() in used:  # same file name in two VOC folders of a devkit
            name = f"{s.path.parent.parent.name}_{name}"
        k = 1
        while name.lower() in used:  # ... or in two sub-folders of a COCO / labelme image folder
            name, k = f"{s.path.stem}_{k}{s.path.suffix}", k + 1
        used.add(name.lower())
        dst = out / "images" / split / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(s.path, dst)
        keep = slice(None) if keep_difficult else ~s.difficult
        result.difficult_dropped += 0 if keep_difficult else int(s.difficult.sum())
        boxes, classes = s.boxes[keep], s.classes[keep]
        write_labels(out / "labels" / split / (Path(name).stem + ".txt"), classes, boxes, s.width, s.height)
        result.images[split] = result.images.get(split, 0) + 1
        result.boxes[split] = result.boxes.get(split, 0) + len(boxes)
    for split in source.splits:  # a split with no images still gets its (empty) folder
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
    splits = {split: f"images/{split}" for split in source.splits}
    write_data_yaml(result.data_yaml, out, splits, source.names)
    return result
