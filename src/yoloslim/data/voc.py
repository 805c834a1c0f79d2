"""Pascal VOC data sets: ``Annotations/*.xml``, ``JPEGImages/``, optional ``ImageSets/Main/*.txt``.

The root may be a VOC folder (``VOC2007/``) or a ``VOCdevkit/`` holding several; they are merged.
VOC coordinates are 1-based inclusive pixel indices, so ``xmin..xmax`` becomes the pixel-edge box
``x1 = xmin - 1, x2 = xmax`` (the devkit's ``xmax - xmin + 1`` width).

Class names come from a names file (one per line: ``--classes``, else ``classes.txt`` or
``names.txt`` in the root) or, without one, from the annotations, sorted. Objects of a class not in
the names are dropped (that is how a subset of the classes is selected) and reported.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from yoloslim.data.images import image_size, is_image, verify_image
from yoloslim.data.source import DataSource, Problem, Sample, box_problems
from yoloslim.errors import UserError
from yoloslim.log import logger
from yoloslim.safe_parse import parse_xml_file

NAMES_FILES = ("classes.txt", "names.txt")


@dataclass
class VocRecord:
    """One parsed annotation file (before matching class names)."""

    xml: Path
    image: Path | None
    width: int
    height: int
    names: list[str] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    difficult: list[bool] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def voc_roots(root: Path) -> list[Path]:
    """The VOC folders under ``root``: itself when it has ``Annotations/``, else its subfolders that do."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: no such file or directory")
    if (root / "Annotations").is_dir():
        return [root]
    subs = sorted(p for p in root.iterdir() if (p / "Annotations").is_dir())
    if not subs:
        raise UserError(f"{root}: not a VOC data set (no Annotations/ folder) and not a data.yaml")
    return subs


def read_names_file(path: Path) -> list[str]:
    """Class names, one per line (blank lines and ``#`` comments ignored)."""
    if not Path(path).is_file():
        raise UserError(f"{path}: no such names file")
    names = [ln.strip() for ln in Path(path).read_text().splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise UserError(f"{path}: names file is empty")
    if len(set(names)) != len(names):
        raise UserError(f"{path}: names file lists a class twice")
    return names


def parse_xml(xml: Path, images: dict[str, Path]) -> tuple[VocRecord | None, list[Problem]]:
    """Parse one annotation file; ``images`` maps lower-case stems and file names to image paths."""
    try:
        tree = parse_xml_file(xml)
    except (ET.ParseError, OSError) as e:
        return None, [Problem(xml, f"XML does not parse ({e})")]
    fname = (tree.findtext("filename") or "").strip()
    image = images.get(fname.lower()) or images.get(Path(fname).stem.lower()) or images.get(xml.stem.lower())
    if image is None:
        return None, [Problem(xml, f"image {fname or xml.stem + '.*'} not found in JPEGImages/")]
    bad = verify_image(image)
    real = None if bad else image_size(image)
    if real is None:
        return None, [Problem(image, bad or "corrupt image (cannot read its size)")]
    rec = VocRecord(xml, image, *real)
    size = tree.find("size")
    try:
        declared = (int(float(size.findtext("width"))), int(float(size.findtext("height"))))
    except (AttributeError, TypeError, ValueError):
        declared = None
    if declared is None:
        rec.problems.append(Problem(xml, "no <size> (image size read from the image)", skipped=False))
    elif declared != real:
        rec.problems.append(Problem(xml, f"<size> {declared[0]}x{declared[1]} differs from the image "
                                         f"{real[0]}x{real[1]} (the image wins)", skipped=False))
    n_nobox = 0
    for obj in tree.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            n_nobox += 1
            continue
        rec.names.append(name)
        rec.boxes.append([xmin - 1, ymin - 1, xmax, ymax])
        rec.difficult.append(_flag(obj.findtext("difficult")))
    if n_nobox:
        rec.problems.append(Problem(xml, f"{n_nobox} object(s) without a valid <bndbox> (dropped)",
                                    skipped=False))
    return rec, []


def _flag(text: str | None) -> bool:
    """A VOC 0/1 tag: empty (``<difficult/>``), missing or unparsable is 0; ``1``, ``1.0``, ``true`` are 1."""
    t = (text or "").strip().lower()
    if t in ("true", "yes"):
        return True
    try:
        return float(t) != 0
    except ValueError:
        return False


def to_sample(rec: VocRecord, names: list[str]) -> tuple[Sample, list[Problem]]:
    """Map class names to indices (dropping unknown ones), clip boxes, drop empty ones."""
    index = {n: i for i, n in enumerate(names)}
    known = [n in index for n in rec.names]
    problems = list(rec.problems)
    unknown = sorted({n for n, k in zip(rec.names, known, strict=False) if not k})
    if unknown:
        problems.append(Problem(rec.xml, f"{len(known) - sum(known)} object(s) of classes not in names "
                                         f"({', '.join(unknown)}) (dropped)", skipped=False))
    boxes = np.asarray([b for b, k in zip(rec.boxes, known, strict=False) if k], np.float32).reshape(-1, 4)
    cls = [index[n] for n in rec.names if n in index]
    diff = np.asarray([d for d, k in zip(rec.difficult, known, strict=False) if k], bool)
    boxes, keep, more = box_problems(rec.xml, boxes, rec.width, rec.height)
    problems.extend(more)
    return Sample.make(rec.image, boxes[keep], np.asarray(cls, np.int64)[keep], rec.width, rec.height,
                       diff[keep]), problems


def split_ids(ids: list[str], val_ratio: float, seed: int) -> tuple[list[str], list[str]]:
    """A deterministic train/val split: sorted ids, shuffled with ``seed``, the first share is val."""
    ids = sorted(ids)
    if not ids:
        return [], []
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = round(len(ids) * val_ratio)
    if val_ratio > 0 and len(ids) > 1:
        n_val = min(max(n_val, 1), len(ids) - 1)
    val = {ids[i] for i in order[:n_val]}
    return [i for i in ids if i not in val], [i for i in ids if i in val]


def voc_split_ids(root: Path, all_ids: list[str], val_ratio: float | None, seed: int
                  ) -> tuple[dict[str, list[str]], list[Problem], str]:
    """Ids per split from ``ImageSets/Main`` (or a seeded split); also problems and how it was split.

    ``val_ratio`` given: ignore ImageSets (except ``test.txt``) and split train+val with it.
    """
    sets = root / "ImageSets" / "Main"
    read = {n: _read_ids(sets / f"{n}.txt") for n in ("train", "val", "trainval", "test")}
    known = set(all_ids)
    problems = []
    for n, ids in read.items():
        missing = [i for i in (ids or []) if i not in known]
        if missing:
            listed = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            problems.append(Problem(sets / f"{n}.txt", f"{len(missing)} id(s) without a usable annotation "
                                                       f"({listed})"))
    keep = lambda ids: [i for i in ids if i in known]  # noqa: E731
    out: dict[str, list[str]] = {}
    if read["test"]:
        out["test"] = keep(read["test"])
    if val_ratio is None and read["train"] is not None and read["val"] is not None:
        out["train"], out["val"] = keep(read["train"]), keep(read["val"])
        problems.extend(one_split_each(out, sets))
        return out, problems, f"splits from {sets}"
    ratio = 0.2 if val_ratio is None else val_ratio
    test = set(out.get("test", []))
    pool = keep(read["trainval"]) if read["trainval"] else [i for i in all_ids if i not in test]
    out["train"], out["val"] = split_ids(pool, ratio, seed)
    problems.extend(one_split_each(out, sets))
    how = "from trainval.txt" if read["trainval"] else "of all annotated images"
    return out, problems, f"seeded split {how}: val ratio {ratio}, seed {seed}"


def one_split_each(ids: dict[str, list[str]], sets: Path) -> list[Problem]:
    """Keep each id in one split (in place): test over val over train, once within a split.

    Real VOC-style sets list some images in two split files; an image in both train and val would
    be scored on what it was trained on. Returns one (kept, not skipped) problem per split file
    that lost ids.
    """
    problems = []
    taken: dict[str, str] = {}
    for split in ("test", "val", "train"):
        if split not in ids:
            continue
        kept, dropped, twice, seen = [], [], 0, set()
        for i in ids[split]:
            if i in taken:
                dropped.append((i, taken[i]))
            elif i in seen:
                twice += 1
            else:
                kept.append(i)
                seen.add(i)
        for i in kept:
            taken[i] = split
        ids[split] = kept
        if dropped:
            listed = ", ".join(f"{i} ({o})" for i, o in dropped[:5]) + (", ..." if len(dropped) > 5 else "")
            problems.append(Problem(sets / f"{split}.txt", f"{len(dropped)} id(s) also in another split, kept "
                                                           f"there only: {listed}", skipped=False))
        if twice:
            problems.append(Problem(sets / f"{split}.txt", f"{twice} id(s) listed twice (used once)",
                                    skipped=False))
    return problems


def load_voc(root: str | Path, names_file: str | Path | None = None, val_ratio: float | None = None,
             seed: int = 0) -> DataSource:
    """Read a VOC data set (one folder or a VOCdevkit of several).

    Args:
        root: the VOC folder, or a folder of VOC folders.
        names_file: class names, one per line; default ``classes.txt``/``names.txt`` in the root, else
            the sorted names found in the annotations.
        val_ratio: split train/val with this ratio instead of using ``ImageSets/Main`` (which is used
            when present; without it, 0.2).
        seed: seed of that split.
    """
    roots = voc_roots(Path(root))
    problems: list[Problem] = []
    records: dict[str, VocRecord] = {}  # id -> record; ids are prefixed with the sub-folder when merged
    splits: dict[str, list[str]] = {}
    for r in roots:
        prefix = f"{r.name}/" if len(roots) > 1 else ""
        images = _image_index(r / "JPEGImages")
        recs = {}
        for xml in sorted((r / "Annotations").glob("*.xml")):
            rec, bad = parse_xml(xml, images)
            problems.extend(bad)
            if rec is not None:
                recs[xml.stem] = rec
        ids, more, how = voc_split_ids(r, list(recs), val_ratio, seed)
        problems.extend(more)
        logger.info(f"{r}: {len(recs)} annotated images, {how}")
        for split, lst in ids.items():
            splits.setdefault(split, []).extend(prefix + i for i in lst)
        records.update({prefix + k: v for k, v in recs.items()})
    if names_file is None:
        found = [r / n for r in [Path(root), *roots] for n in NAMES_FILES if (r / n).is_file()]
        names_file = found[0] if found else None
    if names_file is not None:
        names = read_names_file(Path(names_file))
    else:
        names = sorted({n for rec in records.values() for n in rec.names})
        if not names:
            raise UserError(f"{root}: no objects found in any annotation, and no names file")
    source = DataSource(names=names, splits={}, root=Path(root), problems=problems, fmt="voc")
    for split in ("train", "val", "test"):
        if split not in splits:
            continue
        samples = []
        for i in splits[split]:
            sample, bad = to_sample(records[i], names)
            source.problems.extend(bad)
            samples.append(sample)
        source.splits[split] = samples
        source.backgrounds[split] = sum(len(s.classes) == 0 for s in samples)
    return source


def write_voc_xml(path: Path, filename: str, width: int, height: int, names: list[str],
                  boxes: np.ndarray, difficult: list[bool] | None = None) -> None:
    """Write a VOC annotation for pixel-edge xyxy ``boxes`` (stored 1-based inclusive, rounded)."""
    objs = []
    for k, (name, (x1, y1, x2, y2)) in enumerate(zip(names, boxes, strict=False)):
        d = int(bool(difficult[k])) if difficult is not None else 0
        objs.append(f"  <object>\n    <name>{escape(name)}</name>\n    <pose>Unspecified</pose>\n"
                    f"    <truncated>0</truncated>\n    <difficult>{d}</difficult>\n    <bndbox>\n"
                    f"      <xmin>{round(x1) + 1}</xmin>\n      <ymin>{round(y1) + 1}</ymin>\n"
                    f"      <xmax>{round(x2)}</xmax>\n      <ymax>{round(y2)}</ymax>\n    </bndbox>\n"
                    "  </object>\n")
    text = (f"<annotation>\n  <folder>JPEGImages</folder>\n  <filename>{escape(filename)}</filename>\n"
            f"  <size>\n    <width>{width}</width>\n    <height>{height}</height>\n    <depth>3</depth>\n"
            f"  </size>\n  <segmented>0</segmented>\n{''.join(objs)}</annotation>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _read_ids(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    return [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()]


def _image_index(folder: Path) -> dict[str, Path]:
    """Lower-case file names and stems -> image path, so ``A.JPG`` is found for ``a.jpg`` or ``A``."""
    out: dict[str, Path] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.is_file() and is_image(p):
                out.setdefault(p.name.lower(), p)
                out.setdefault(p.stem.lower(), p)
    return out
