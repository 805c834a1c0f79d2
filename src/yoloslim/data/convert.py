"""Pascal VOC -> YOLO txt: ``images/{split}/``, ``labels/{split}/`` and a ``data.yaml``, in one call."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from yoloslim.data.source import warn_problems
from yoloslim.data.voc import load_voc
from yoloslim.data.yolo import write_data_yaml, write_labels
from yoloslim.errors import UserError


@dataclass
class ConvertResult:
    """What a conversion wrote.

    Attributes:
        data_yaml: the written ``data.yaml``.
        images: images per split.
        boxes: boxes written per split.
        difficult_dropped: VOC ``difficult`` objects left out (0 with ``keep_difficult``).
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
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: folder is not empty; choose a new --out")
    if val_ratio is not None and not 0 <= val_ratio < 1:
        raise UserError(f"--val-ratio must be in [0, 1), got {val_ratio}")
    source = load_voc(voc_root, names_file=classes_file, val_ratio=val_ratio, seed=seed)
    warn_problems(source, str(voc_root))
    result = ConvertResult(data_yaml=out / "data.yaml", problems=len(source.problems), names=source.names)
    used: set[str] = set()
    todo = [(split, s) for split, samples in source.splits.items() for s in samples]
    for split, s in tqdm(todo, desc="converting", unit="img", disable=not progress, leave=False):
        name = s.path.name
        if name.lower() in used:  # same file name in two VOC folders of a devkit
            name = f"{s.path.parent.parent.name}_{name}"
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
