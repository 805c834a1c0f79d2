"""YOLOv8 and YOLO11 n / s / m / l / x: anchor-free detectors with a DFL box head, one family (``yolov8``).

The layer tables are the published ``yolov8.yaml`` and ``yolo11.yaml`` (from, repeats, module, args);
a preset scales them by depth, width and a channel cap (``max_channels``). YOLO11 swaps C2f for C3k2,
adds the C2PSA attention stage after SPPF and a depthwise class branch; its m / l / x scales use C3k
blocks inside every C3k2. Module names are the reference's (``model.0.conv.weight`` ...,
``model.22.cv2.0.0.conv.weight``, ``model.22.dfl.conv.weight`` for v8, Detect at ``model.23`` for 11).
YOLOv5u (``yolov5nu`` ... ``yolov5xu``, ultralytics' ``yolov5.yaml``) is the YOLOv5 v6 backbone and
neck (6x6 stem, C3 blocks, SPPF) under the same anchor-free DFL head: the third table, ``"5u"``.

The forward returns raw maps ``(b, 4·reg_max + nc, h/s, w/s)`` for strides 8, 16, 32: the DFL logits
of the box sides (l, t, r, b; ``reg_max`` bins each) then the class logits. Decoding is
:mod:`yoloslim.models.decode`'s ``"dfl"`` style; the loss reads :attr:`YOLOv8.detect`. Input: RGB 0..1.
"""

from __future__ import annotations

import torch
from torch import nn

from yoloslim.errors import UserError
from yoloslim.models.blocks import Concat, Conv, run_layers
from yoloslim.models.blocks_v8 import C2PSA, REG_MAX, Attention, C2f, DetectDFL
from yoloslim.models.family import Family
from yoloslim.models.spec import ArchSpec, Widths, make_divisible
from yoloslim.models.yolov5 import C3, SPPF
from yoloslim.models.yolov5 import LAYERS as YOLOV5_LAYERS

Layer = tuple[int | list[int], int, str, list]

# (from, repeats, module, args) as the reference yaml files; widths for width multiple 1.0.
LAYERS_V8: list[Layer] = [
    (-1, 1, "Conv", [64, 3, 2]),  # 0-P1/2
    (-1, 1, "Conv", [128, 3, 2]),  # 1-P2/4
    (-1, 3, "C2f", [128, True]),
    (-1, 1, "Conv", [256, 3, 2]),  # 3-P3/8
    (-1, 6, "C2f", [256, True]),
    (-1, 1, "Conv", [512, 3, 2]),  # 5-P4/16
    (-1, 6, "C2f", [512, True]),
    (-1, 1, "Conv", [1024, 3, 2]),  # 7-P5/32
    (-1, 3, "C2f", [1024, True]),
    (-1, 1, "SPPF", [1024, 5]),  # 9
    (-1, 1, "Upsample", []),
    ([-1, 6], 1, "Concat", []),  # cat backbone P4
    (-1, 3, "C2f", [512, False]),  # 12
    (-1, 1, "Upsample", []),
    ([-1, 4], 1, "Concat", []),  # cat backbone P3
    (-1, 3, "C2f", [256, False]),  # 15 (P3/8-small)
    (-1, 1, "Conv", [256, 3, 2]),
    ([-1, 12], 1, "Concat", []),  # cat head P4
    (-1, 3, "C2f", [512, False]),  # 18 (P4/16-medium)
    (-1, 1, "Conv", [512, 3, 2]),
    ([-1, 9], 1, "Concat", []),  # cat head P5
    (-1, 3, "C2f", [1024, False]),  # 21 (P5/32-large)
    ([15, 18, 21], 1, "Detect", []),
]

LAYERS_11: list[Layer] = [
    (-1, 1, "Conv", [64, 3, 2]),  # 0-P1/2
    (-1, 1, "Conv", [128, 3, 2]),  # 1-P2/4
    (-1, 2, "C3k2", [256, False, 0.25]),
    (-1, 1, "Conv", [256, 3, 2]),  # 3-P3/8
    (-1, 2, "C3k2", [512, False, 0.25]),
    (-1, 1, "Conv", [512, 3, 2]),  # 5-P4/16
    (-1, 2, "C3k2", [512, True]),
    (-1, 1, "Conv", [1024, 3, 2]),  # 7-P5/32
    (-1, 2, "C3k2", [1024, True]),
    (-1, 1, "SPPF", [1024, 5]),  # 9
    (-1, 2, "C2PSA", [1024]),  # 10
    (-1, 1, "Upsample", []),
    ([-1, 6], 1, "Concat", []),  # cat backbone P4
    (-1, 2, "C3k2", [512, False]),  # 13
    (-1, 1, "Upsample", []),
    ([-1, 4], 1, "Concat", []),  # cat backbone P3
    (-1, 2, "C3k2", [256, False]),  # 16 (P3/8-small)
    (-1, 1, "Conv", [256, 3, 2]),
    ([-1, 13], 1, "Concat", []),  # cat head P4
    (-1, 2, "C3k2", [512, False]),  # 19 (P4/16-medium)
    (-1, 1, "Conv", [512, 3, 2]),
    ([-1, 10], 1, "Concat", []),  # cat head P5
    (-1, 2, "C3k2", [1024, True]),  # 22 (P5/32-large)
    ([16, 19, 22], 1, "Detect", []),
]

# YOLOv5u: YOLOv5's backbone and neck, layer for layer (its table, one source); "Detect" here is the
# anchor-free DFL head
LAYERS_5U: list[Layer] = YOLOV5_LAYERS

LAYERS = {"v8": LAYERS_V8, "11": LAYERS_11, "5u": LAYERS_5U}

# name: (version, depth multiple, width multiple, max channels), the scales of the reference yaml files.
# YOLO11's m / l / x scales use C3k blocks in every C3k2 (the yaml's per-layer switch applies to n / s).
PRESETS: dict[str, tuple[str, float, float, int]] = {
    "yolov8n": ("v8", 0.33, 0.25, 1024),
    "yolov8s": ("v8", 0.33, 0.50, 1024),
    "yolov8m": ("v8", 0.67, 0.75, 768),
    "yolov8l": ("v8", 1.00, 1.00, 512),
    "yolov8x": ("v8", 1.00, 1.25, 512),
    "yolo11n": ("11", 0.50, 0.25, 1024),
    "yolo11s": ("11", 0.50, 0.50, 1024),
    "yolo11m": ("11", 0.50, 1.00, 512),
    "yolo11l": ("11", 1.00, 1.00, 512),
    "yolo11x": ("11", 1.00, 1.50, 512),
    "yolov5nu": ("5u", 0.33, 0.25, 1024),
    "yolov5su": ("5u", 0.33, 0.50, 1024),
    "yolov5mu": ("5u", 0.67, 0.75, 1024),
    "yolov5lu": ("5u", 1.00, 1.00, 1024),
    "yolov5xu": ("5u", 1.33, 1.25, 1024),
}
C3K_SCALES = ("m", "l", "x")
MAX_REG_MAX = 64  # a file's spec may say anything; the published heads use 16


class YOLOv8(nn.Module):
    """YOLOv8 / YOLO11 detector returning raw head maps, one per stride.

    Attributes:
        detect: the head (:class:`~yoloslim.models.blocks_v8.DetectDFL`), also ``model[-1]``.
        reg_max: DFL bins per box side; ``nc``: classes; ``strides``: the levels' strides.
    """

    def __init__(self, spec: ArchSpec, record: bool = False) -> None:
        super().__init__()
        self.spec = spec
        opts = spec.options
        version = str(opts.get("version", "v8"))
        if version not in LAYERS:
            raise UserError(f"spec of {spec.name!r}: unknown yolov8 version {version!r} ({', '.join(LAYERS)})")
        table = LAYERS[version]
        gd, gw = float(opts.get("depth_multiple", 1.0)), float(opts.get("width_multiple", 1.0))
        cap = int(opts.get("max_channels", 1024))
        c3k_all = bool(opts.get("c3k", False))
        self.reg_max = int(opts.get("reg_max", REG_MAX))
        if not 1 <= self.reg_max <= MAX_REG_MAX:
            raise UserError(f"spec of {spec.name!r}: reg_max {self.reg_max} is outside 1..{MAX_REG_MAX}")
        self.nc = spec.nc
        self.strides = list(spec.strides)
        w = Widths(spec, record)
        layers: list[nn.Module] = []
        ch = [3]
        for i, (f, n, kind, args) in enumerate(table):
            name = f"model.{i}"
            n_default = max(round(n * gd), 1) if n > 1 else n
            c_in = ch[f] if isinstance(f, int) else None
            c_def = make_divisible(min(args[0], cap) * gw) if args else 0
            if kind == "Conv":
                m = Conv(c_in, w.ch(f"{name}.conv", c_def), args[1], args[2], *args[3:4])
                c2 = m.conv.out_channels
            elif kind == "C3":  # YOLOv5u
                m = C3(w, name, c_in, c_def, n_default, shortcut=args[1] if len(args) > 1 else True)
                c2 = m.cv3.conv.out_channels
            elif kind == "C2f":
                m = C2f(w, name, c_in, c_def, n_default, shortcut=args[1], e=0.5, kind="c2f")
                c2 = m.cv2.conv.out_channels
            elif kind == "C3k2":
                c3k = c3k_all or (len(args) > 1 and args[1])
                e = args[2] if len(args) > 2 else 0.5
                m = C2f(w, name, c_in, c_def, n_default, shortcut=True, e=e, kind="c3k" if c3k else "c3k2")
                c2 = m.cv2.conv.out_channels
            elif kind == "SPPF":
                m = SPPF(w, name, c_in, c_def, args[1])
                c2 = m.cv2.conv.out_channels
            elif kind == "C2PSA":
                m = C2PSA(w, name, c_in, c_def, n_default)
                c2 = m.cv2.conv.out_channels
            elif kind == "Upsample":
                m = nn.Upsample(None, 2, "nearest")
                c2 = c_in
            elif kind == "Concat":
                m = Concat(1)
                c2 = sum(ch[j] for j in f)
            else:  # Detect
                m = DetectDFL(w, name, spec.nc, [ch[j] for j in f], self.strides, self.reg_max,
                              depthwise=version == "11")
                c2 = 0
            m.f = f  # where the layer's input comes from
            m.i = i
            layers.append(m)
            ch = ch + [c2] if i else [c2]
        self.model = nn.Sequential(*layers)
        self.save = sorted({j for f, *_ in table for j in ([f] if isinstance(f, int) else f) if j != -1})
        w.check_all_used()
        _check_splits(spec, self)
        self.detect.initialize_biases()

    @property
    def detect(self) -> DetectDFL:
        return self.model[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Args: x (b, 3, h, w) RGB in 0..1. Returns raw maps [(b, 4·reg_max + nc, h/s, w/s) for s in strides]."""
        return run_layers(self.model, self.save, x)

    @property
    def head_convs(self) -> list[nn.Conv2d]:
        """The prediction convs whose outputs are fixed by the head's layout, and the fixed DFL conv."""
        d = self.detect
        return [*(s[-1] for s in d.cv2), *(s[-1] for s in d.cv3), d.dfl.conv]

    @property
    def fixed_channels(self) -> dict[str, str]:
        """Convs whose output channels pruning must keep, with the reason (read by the pruning graph)."""
        out = {}
        for name, m in self.named_modules():
            if isinstance(m, Attention):
                for conv in ("qkv", "pe"):
                    out[f"{name}.{conv}.conv"] = ATTENTION_FIXED
        return out


ATTENTION_FIXED = ("is C2PSA attention: its channels are reshaped into heads (query, key and value of each "
                   "head), coupled across heads, so they stay whole; the block's residual width is prunable")


def _check_splits(spec: ArchSpec, model: nn.Module) -> None:
    """Refuse split sizes for convs the model does not split (a file may name anything)."""
    used = {f"{n}.cv1.conv" for n, m in model.named_modules() if hasattr(m, "sizes")}
    extra = set(spec.options.get("split", {})) - used
    if extra:
        raise UserError(f"spec of {spec.name!r}: options.split names convs the model does not split: "
                        f"{sorted(extra)[:5]}")


def yolov8_spec(name: str, nc: int = 80) -> ArchSpec:
    """The preset spec of ``name`` (yolov8n ... yolov8x, yolo11n ... yolo11x), every width and depth filled in."""
    version, gd, gw, cap = PRESETS[name]
    spec = ArchSpec(
        family=FAMILY.name, name=name, nc=nc, anchors=[], strides=list(FAMILY.strides),
        options={"version": version, "depth_multiple": gd, "width_multiple": gw, "max_channels": cap,
                 "c3k": version == "11" and name[-1] in C3K_SCALES, "reg_max": REG_MAX,
                 **FAMILY.input_options(), "decode": FAMILY.decode},
    )
    YOLOv8(spec, record=True)  # fills spec.channels, spec.depths and spec.options["split"]
    return spec


FAMILY = Family(
    name="yolov8", builder=YOLOv8, presets={name: (lambda nc, name=name: yolov8_spec(name, nc)) for name in PRESETS},
    loss="yoloslim.loss.yolov8:YOLOv8Loss", decode="dfl", input_bgr=False, input_scale=1 / 255,
    strides=(8, 16, 32), importers={"ultralytics": "yoloslim.deploy.import_ultralytics:import_ultralytics"},
)
