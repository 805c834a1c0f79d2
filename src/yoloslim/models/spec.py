"""Architecture specs: plain data that the model builders turn into modules.

A spec holds every convolution's output width and every repeated stage's depth, keyed by the
module's name in the state dict. A pruned model is simply a spec with smaller numbers: the same
builder rebuilds it, and loading its weights is strict.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from yoloslim.errors import UserError

if TYPE_CHECKING:
    from yoloslim.models.family import Family

# Bounds a spec read from a file must stay within (the largest presets use 1,280 channels, depth 9).
MAX_WIDTH = 16384
MAX_DEPTH = 256
MAX_CLASSES = 100_000


@dataclass
class ArchSpec:
    """Everything needed to rebuild a detector, as JSON-able data.

    Attributes:
        family: builder family, e.g. ``"yolov5"``, ``"yolov3"``, ``"yolox"``.
        name: the preset it started from, e.g. ``"yolov5s"``.
        nc: number of classes.
        channels: output channels of every convolution, by module name (``"model.2.cv1.conv"``).
        depths: number of repeated blocks of every stage, by module name (``"model.2"``).
        anchors: per level, anchor (w, h) pairs in input pixels; empty for anchor-free heads.
        strides: the head's strides, one per level.
        options: family-specific options (e.g. a darknet cfg, depthwise flag, input convention).
    """

    family: str
    name: str
    nc: int
    channels: dict[str, int] = field(default_factory=dict)
    depths: dict[str, int] = field(default_factory=dict)
    anchors: list[list[float]] = field(default_factory=list)
    strides: list[int] = field(default_factory=lambda: [8, 16, 32])
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        """A spec from plain data, every field's type and range checked (a file may hold anything)."""
        if not isinstance(data, dict):
            raise UserError("architecture spec is not a mapping")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise UserError(f"architecture spec has unknown keys {sorted(map(str, unknown))[:5]}")
        missing = {"family", "name", "nc"} - set(data)
        if missing:
            raise UserError(f"architecture spec lacks {sorted(missing)}")
        spec = cls(**copy.deepcopy(data))
        if not isinstance(spec.family, str) or not isinstance(spec.name, str):
            raise UserError("architecture spec: family and name must be strings")
        spec.nc = _bounded_int(spec.nc, "nc", 1, MAX_CLASSES)
        for key, top, low in (("channels", MAX_WIDTH, 1), ("depths", MAX_DEPTH, 0)):
            table = getattr(spec, key)
            if not isinstance(table, dict):
                raise UserError(f"architecture spec: {key} must be a mapping of module name to number")
            setattr(spec, key, {str(k): _bounded_int(v, f"{key}[{str(k)[:60]!r}]", low, top)
                                for k, v in table.items()})
        if not isinstance(spec.strides, list) or not spec.strides:
            raise UserError("architecture spec: strides must be a non-empty list")
        spec.strides = [_bounded_int(v, "strides", 1, 1024) for v in spec.strides]
        if not isinstance(spec.anchors, list) or not all(
                isinstance(a, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in a)
                for a in spec.anchors):
            raise UserError("architecture spec: anchors must be lists of numbers")
        if not isinstance(spec.options, dict):
            raise UserError("architecture spec: options must be a mapping")
        return spec

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError, RecursionError) as e:
            raise UserError(f"architecture spec is not valid JSON ({e.__class__.__name__})") from None
        return cls.from_dict(data)

    def copy(self) -> ArchSpec:
        return ArchSpec.from_dict(self.to_dict())

    @property
    def num_anchors(self) -> int:
        return len(self.anchors[0]) // 2 if self.anchors else 1

    @property
    def input_bgr(self) -> bool:
        """True when the model takes BGR pixels (YOLOX convention); False for RGB. ``options["input_bgr"]``
        when set, else the family's (:class:`yoloslim.models.family.Family`)."""
        if "input_bgr" in self.options:
            return bool(self.options["input_bgr"])
        return _family(self).input_bgr

    @property
    def input_scale(self) -> float:
        """Factor applied to 0-255 pixels before the model: 1/255 (YOLOv5, v3) or 1 (YOLOX).
        ``options["input_scale"]`` when set, else the family's."""
        if "input_scale" in self.options:
            return float(self.options["input_scale"])
        return _family(self).input_scale


class Widths:
    """Channel and depth look-up used by builders while they create modules.

    With a preset (``record=True``) every look-up returns the builder's default and records it, so
    the preset spec lists every conv. With a saved or pruned spec every look-up must hit a key, and
    :meth:`check_all_used` refuses keys the builder never asked for.
    """

    def __init__(self, spec: ArchSpec, record: bool) -> None:
        self.spec = spec
        self.record = record
        self._used_channels: set[str] = set()
        self._used_depths: set[str] = set()

    def ch(self, name: str, default: int) -> int:
        """Output channels of the conv ``name`` (its module name in the state dict)."""
        self._used_channels.add(name)
        if self.record:
            self.spec.channels[name] = int(default)
            return int(default)
        if name not in self.spec.channels:
            raise UserError(f"spec of {self.spec.name!r} has no width for conv {name!r}")
        return self.spec.channels[name]

    def depth(self, name: str, default: int) -> int:
        """Number of repeated blocks in stage ``name``."""
        self._used_depths.add(name)
        if self.record:
            self.spec.depths[name] = int(default)
            return int(default)
        if name not in self.spec.depths:
            raise UserError(f"spec of {self.spec.name!r} has no depth for stage {name!r}")
        return self.spec.depths[name]

    def check_all_used(self) -> None:
        extra = (set(self.spec.channels) - self._used_channels) | (set(self.spec.depths) - self._used_depths)
        if extra:
            raise UserError(f"spec of {self.spec.name!r} names modules the model does not have: {sorted(extra)[:5]}")


def _family(spec: ArchSpec) -> Family:
    """The spec's :class:`~yoloslim.models.family.Family` record."""
    from yoloslim.models import family_of  # the registry imports the builders, which import this module

    return family_of(spec)


def _bounded_int(value: Any, what: str, low: int, high: int) -> int:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value != int(value)):
        raise UserError(f"architecture spec: {what} must be a whole number, got {str(value)[:40]!r}")
    if not low <= value <= high:
        raise UserError(f"architecture spec: {what} is {int(value)}, outside {low}..{high} (refused)")
    return int(value)


def make_divisible(x: float, divisor: int = 8) -> int:
    """Smallest multiple of ``divisor`` not below ``x`` (the YOLOv5 width rule)."""
    return int(-(-x // divisor) * divisor)


def check_imgsz(imgsz: int, spec_or_stride: ArchSpec | int, flag: str = "--imgsz") -> None:
    """Refuse an image size that is not a positive multiple of the model's largest stride.

    Args:
        imgsz: the size a user asked for.
        spec_or_stride: the model's spec (its largest stride counts) or the stride itself.
        flag: the option the size came from, named in the message.

    Raises:
        UserError: ``imgsz`` is not a positive multiple of the stride.
    """
    stride = max(spec_or_stride.strides) if isinstance(spec_or_stride, ArchSpec) else spec_or_stride
    if imgsz <= 0 or imgsz % stride:
        raise UserError(f"{flag} must be a positive multiple of {stride}, got {imgsz}")
