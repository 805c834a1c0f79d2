"""Architecture specs: plain data that the model builders turn into modules.

A spec holds every convolution's output width and every repeated stage's depth, keyed by the
module's name in the state dict. A pruned model is simply a spec with smaller numbers: the same
builder rebuilds it, and loading its weights is strict.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from yoloslim.errors import UserError


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
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise UserError(f"architecture spec has unknown keys {sorted(unknown)}")
        missing = {"family", "name", "nc"} - set(data)
        if missing:
            raise UserError(f"architecture spec lacks {sorted(missing)}")
        spec = cls(**copy.deepcopy(data))
        spec.channels = {k: int(v) for k, v in spec.channels.items()}
        spec.depths = {k: int(v) for k, v in spec.depths.items()}
        return spec

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        return cls.from_dict(json.loads(text))

    def copy(self) -> ArchSpec:
        return ArchSpec.from_dict(self.to_dict())

    @property
    def num_anchors(self) -> int:
        return len(self.anchors[0]) // 2 if self.anchors else 1

    @property
    def input_bgr(self) -> bool:
        """True when the model takes BGR pixels (YOLOX convention); False for RGB."""
        return bool(self.options.get("input_bgr", False))

    @property
    def input_scale(self) -> float:
        """Factor applied to 0-255 pixels before the model: 1/255 (YOLOv5, v3) or 1 (YOLOX)."""
        return float(self.options.get("input_scale", 1.0 / 255.0))


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


def make_divisible(x: float, divisor: int = 8) -> int:
    """Smallest multiple of ``divisor`` not below ``x`` (the YOLOv5 width rule)."""
    return int(-(-x // divisor) * divisor)
