"""Which of a model's classes a data set's classes are: matching class names, once for val, prune and train.

A model trained on COCO knows ``person``, ``car``, ...; a VOC subset names ``person``, ``car`` too,
and ``aeroplane`` where COCO says ``airplane``. :func:`match_classes` finds, for every class of the
data set, the model's class of the same name: exactly, else ignoring case, spaces, ``_`` and ``-``
(``dining table`` = ``diningtable``), else through a class-map file (``--class-map``), a YAML
mapping ``data set name: model name``::

    aeroplane: airplane
    motorbike: motorcycle
    sofa: couch
    tvmonitor: tv

The result says which rows of the model's head to keep (see
:func:`yoloslim.models.head_classes.select_classes`): scoring then covers exactly the data set's
classes, and fine-tuning starts from the model's own rows for them.

Two fallbacks keep older habits working: a model without class names, or whose names share none
with the data set's, is matched by position when the counts agree (with a warning).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path

import yaml

from yoloslim.errors import UserError
from yoloslim.log import logger


@dataclass
class ClassMatch:
    """How a data set's classes map onto a model's.

    Attributes:
        data_names: the data set's class names, in its order.
        model_names: the model's class names, in its order.
        ids: for each data class, the model's class index; -1 for a class the model does not know
            (only when new classes are allowed, i.e. fine-tuning).
        renamed: data name -> model name, where they differ.
        how: ``"name"`` or ``"position"`` (no names in common, or none in the model).
    """

    data_names: list[str]
    model_names: list[str]
    ids: list[int]
    renamed: dict[str, str] = field(default_factory=dict)
    how: str = "name"

    @property
    def identity(self) -> bool:
        """True when the model's head fits the data set as it is (same classes, same order)."""
        return self.ids == list(range(len(self.model_names)))

    @property
    def new(self) -> list[str]:
        """Data classes the model does not know."""
        return [n for n, i in zip(self.data_names, self.ids, strict=True) if i < 0]

    def describe(self) -> str:
        """One line saying what was matched, e.g. for the log of val, prune and train."""
        known = [n for n, i in zip(self.data_names, self.ids, strict=True) if i >= 0]
        text = (f"{len(known)} of the model's {len(self.model_names)} classes, by {self.how}: "
                f"{_short(known)}")
        if self.renamed:
            text += "; mapped " + ", ".join(f"{a} -> {b}" for a, b in self.renamed.items())
        if self.new:
            text += f"; new (not in the model): {_short(self.new)}"
        return text


def read_class_map(path: str | Path) -> dict[str, str]:
    """A class-map file: a YAML mapping ``data set name: model name``.

    Raises:
        UserError: missing, not YAML, not a mapping of names, or two names mapped to one.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such class-map file")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not valid YAML ({e.__class__.__name__})") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{p}: a class map is a YAML mapping 'data set name: model name', one per line")
    out = {str(k): str(v) for k, v in data.items() if v is not None}
    if len(set(out.values())) != len(out):
        dup = sorted({v for v in out.values() if list(out.values()).count(v) > 1})
        raise UserError(f"{p}: several data set classes mapped to {', '.join(dup)}")
    return out


def match_classes(model_names: list[str], data_names: list[str], class_map: str | Path | None = None,
                  allow_new: bool = False, nc: int | None = None) -> ClassMatch:
    """Match the data set's classes to the model's by name (see the module doc).

    Args:
        model_names: the model file's class names (may be empty for an old file).
        data_names: the data set's class names.
        class_map: a class-map file (data set name: model name).
        allow_new: classes the model does not know get id -1 (fine-tuning learns them) instead of
            an error (scoring cannot score them).
        nc: the model's class count, naming its classes ``class0``, ... when ``model_names`` is empty.

    Raises:
        UserError: a data class the model does not know (unless ``allow_new``), a map target that
            is not a model class, or two data classes on one model class.
    """
    data_names = list(data_names)
    named = bool(model_names)
    model_names = list(model_names) or [f"class{i}" for i in range(nc or 0)]
    mapping = read_class_map(class_map) if class_map else {}
    common = {_key(n) for n in model_names} & {_key(n) for n in data_names}
    if not mapping and not common and len(model_names) == len(data_names):
        why = "'s class names share none with the data set's" if named else " file names no classes"
        logger.warning(f"the model{why}; matching by position ({_short(data_names)} as {_short(model_names)})")
        return ClassMatch(data_names, model_names, list(range(len(data_names))), how="position")
    unused = sorted(set(mapping) - set(data_names))
    if unused:
        logger.warning(f"{class_map}: not classes of the data set, ignored: {', '.join(unused)}")
    exact = {n: i for i, n in enumerate(model_names)}
    loose: dict[str, list[int]] = {}
    for i, n in enumerate(model_names):
        loose.setdefault(_key(n), []).append(i)
    ids, renamed, unknown = [], {}, []
    for name in data_names:
        target = mapping.get(name, name)
        if target in exact:
            i = exact[target]
        elif len(loose.get(_key(target), [])) == 1:
            i = loose[_key(target)][0]
        elif name in mapping:
            raise UserError(f"{class_map}: {name}: {target} is not a class of the model{_hint(target, model_names)}")
        else:
            unknown.append(name)
            i = -1
        if i >= 0 and model_names[i] != name:
            renamed[name] = model_names[i]
        ids.append(i)
    if unknown and not allow_new:
        first = unknown[0]
        raise UserError(f"the data set's class{'es' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                        f"{'are' if len(unknown) > 1 else 'is'} not among the model's {len(model_names)} classes"
                        f"{_hint(first, model_names)}; map names with --class-map FILE (lines 'data name: "
                        "model name')")
    taken: dict[int, str] = {}
    for name, i in zip(data_names, ids, strict=True):
        if i >= 0 and i in taken:
            raise UserError(f"the data set's classes {taken[i]} and {name} both match the model's class "
                            f"{model_names[i]}")
        taken[i] = name
    return ClassMatch(data_names, model_names, ids, renamed)


def _key(name: str) -> str:
    """A name compared loosely: lower case, without spaces, ``_`` and ``-``."""
    return re.sub(r"[\s_\-]+", "", name.lower())


def _hint(name: str, names: list[str]) -> str:
    close = get_close_matches(name, names, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _short(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")
