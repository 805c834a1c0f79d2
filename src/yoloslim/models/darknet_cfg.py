"""Darknet ``.cfg`` text: parse it into sections, check what yoloslim supports, write it back.

A cfg is a list of sections, each a dict with a ``"type"`` key (``"net"``, ``"convolutional"``,
``"shortcut"``, ``"route"``, ``"upsample"``, ``"maxpool"``, ``"yolo"``) and the section's keys with
typed values (int, float, str, or a list of numbers for comma-separated values). The list is
JSON-able: the YOLOv3 family keeps it in ``ArchSpec.options["cfg"]``.

Semantics follow darknet (pjreddie/darknet ``src/parser.c``), which owns the format:

- ``[convolutional]``: ``pad=1`` means ``padding = size // 2``; otherwise ``padding=`` (default 0).
  Leaky slope 0.1. Without ``batch_normalize`` the conv has a bias.
- ``[maxpool]``: ``stride`` defaults to 1, ``size`` to ``stride``, ``padding`` to ``size - 1``; the
  window starts ``padding // 2`` before the pixel, so ``size=2 stride=1`` pads one pixel on the
  right and bottom and keeps the map size.
- ``[route] layers=``, ``[shortcut] from=``: a negative index counts back from the current layer,
  a non-negative one is an absolute layer index (the ``[net]`` section is not a layer).
- ``[upsample]``: nearest neighbour by ``stride`` (default 2).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from yoloslim.errors import UserError
from yoloslim.log import logger

Section = dict[str, Any]

SUPPORTED = ("convolutional", "shortcut", "route", "upsample", "maxpool", "yolo")
ACTIVATIONS = ("leaky", "linear", "relu", "relu6", "swish")

# Keys each section type understands. Keys outside these are ignored with a warning (darknet does
# the same), except the ones in REFUSED, which change the computation in ways yoloslim does not model.
KNOWN_KEYS = {
    "convolutional": {"batch_normalize", "filters", "size", "stride", "pad", "padding", "groups",
                      "activation"},
    "shortcut": {"from", "activation"},
    "route": {"layers"},
    "upsample": {"stride"},
    "maxpool": {"size", "stride", "padding"},
    "yolo": {"mask", "anchors", "classes", "num", "jitter", "ignore_thresh", "truth_thresh", "random",
             "iou_thresh", "iou_loss", "iou_normalizer", "cls_normalizer", "obj_normalizer", "max_delta",
             "nms_kind", "beta_nms", "label_smooth_eps", "counters_per_class", "resize", "focal_loss"},
}
# key -> the only value yoloslim accepts
REFUSED = {
    "convolutional": {"dilation": 1, "binary": 0, "xnor": 0, "flipped": 0, "antialiasing": 0, "deform": 0,
                      "share_index": None, "stride_x": None, "stride_y": None},
    "shortcut": {"weights_type": "none", "weights_normalization": "none", "alpha": 1, "beta": 0},
    "route": {"groups": 1, "group_id": 0},
    "upsample": {"scale": 1},
    "maxpool": {"maxpool_depth": 0, "antialiasing": 0, "stride_x": None, "stride_y": None},
    "yolo": {"scale_x_y": 1, "new_coords": 0},
}


def parse_cfg(text: str, source: str = "cfg") -> list[Section]:
    """Parse darknet cfg text into sections (the first one must be ``[net]``).

    Args:
        text: the cfg file's content.
        source: a name for error messages (usually the file path).

    Raises:
        UserError: text outside a section, a line without ``=``, or no ``[net]`` section first.
    """
    sections: list[Section] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise UserError(f"{source}:{lineno}: malformed section header {raw.strip()!r}")
            sections.append({"type": line[1:-1].strip().lower()})
            continue
        if not sections:
            raise UserError(f"{source}:{lineno}: {raw.strip()!r} comes before any [section]")
        if "=" not in line:
            raise UserError(f"{source}:{lineno}: expected key=value, got {raw.strip()!r}")
        key, value = (s.strip() for s in line.split("=", 1))
        sections[-1][re.sub(r"\s+", "", key)] = _typed(re.sub(r"\s+", "", value))
    if not sections or sections[0]["type"] not in ("net", "network"):
        raise UserError(f"{source}: a darknet cfg starts with a [net] section")
    sections[0]["type"] = "net"
    return sections


def read_cfg(path: str | Path) -> list[Section]:
    """Parse a ``.cfg`` file; see :func:`parse_cfg`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such cfg file")
    return parse_cfg(path.read_text(errors="replace"), source=str(path))


def format_cfg(sections: list[Section]) -> str:
    """Darknet cfg text of ``sections`` (blank line between sections, ``key=value`` lines)."""
    blocks = []
    for sec in sections:
        lines = [f"[{sec['type']}]"]
        lines += [f"{k}={_text(v)}" for k, v in sec.items() if k != "type"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def check_sections(sections: list[Section], source: str = "cfg") -> None:
    """Refuse what yoloslim cannot compute exactly; warn about keys it ignores.

    Layers are numbered as darknet numbers them: the first section after ``[net]`` is layer 0.

    Raises:
        UserError: naming the layer, for an unsupported section type, activation or key value.
    """
    net = sections[0]
    if int(net.get("channels", 3)) != 3:
        raise UserError(f"{source}: [net] channels={net['channels']}; yoloslim models take 3-channel images")
    for i, sec in enumerate(sections[1:]):
        kind = sec["type"]
        where = f"{source}: layer {i} [{kind}]"
        if kind not in SUPPORTED:
            known = ", ".join(f"[{s}]" for s in SUPPORTED)
            raise UserError(f"{where} is not supported; yoloslim reads {known}")
        for key, ok in REFUSED[kind].items():
            if key in sec and (ok is None or sec[key] != ok):
                raise UserError(f"{where}: {key}={_text(sec[key])} is not supported")
        for key in sec:
            if key != "type" and key not in KNOWN_KEYS[kind] and key not in REFUSED[kind]:
                logger.warning(f"{where}: ignoring unknown key {key!r}")
        act = sec.get("activation", "linear")
        if kind in ("convolutional", "shortcut") and act not in ACTIVATIONS:
            raise UserError(f"{where}: activation={act} is not supported; use one of "
                            f"{', '.join(ACTIVATIONS)}")
        if kind == "convolutional":
            for key in ("filters", "size"):
                if not isinstance(sec.get(key), int) or sec[key] < 1:
                    raise UserError(f"{where}: needs a positive integer {key}=")
        if kind == "shortcut" and not isinstance(sec.get("from"), int):
            raise UserError(f"{where}: needs one integer from= (several inputs are not supported)")
        if kind == "route" and not all(isinstance(v, int) for v in as_list(sec.get("layers", []))) \
                or kind == "route" and not as_list(sec.get("layers", [])):
            raise UserError(f"{where}: needs integer layers=")
        if kind == "upsample" and int(sec.get("stride", 2)) < 1:
            raise UserError(f"{where}: stride={sec['stride']} (down-sampling) is not supported")
        if kind == "yolo":
            if "anchors" not in sec or "classes" not in sec:
                raise UserError(f"{where}: needs anchors= and classes=")


def as_list(value: Any) -> list:
    """A cfg value as a list (``layers=-1`` parses to an int, ``layers=-1,61`` to a list)."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def conv_padding(sec: Section) -> int:
    """Darknet's padding of a conv: ``size // 2`` with ``pad=1``, else ``padding=`` (default 0)."""
    return int(sec["size"]) // 2 if int(sec.get("pad", 0)) else int(sec.get("padding", 0))


def maxpool_geometry(sec: Section) -> tuple[int, int, int, int]:
    """``(size, stride, pad_before, pad_after)`` of a darknet maxpool (see the module docstring)."""
    stride = int(sec.get("stride", 1))
    size = int(sec.get("size", stride))
    padding = int(sec.get("padding", size - 1))
    return size, stride, padding // 2, padding - padding // 2


def _typed(value: str) -> Any:
    if "," in value:
        parts = [p for p in value.split(",") if p]
        nums = [_number(p) for p in parts]
        return nums if all(n is not None for n in nums) else value
    n = _number(value)
    return value if n is None else n


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)
