"""Blocks of YOLOv8 and YOLO11: C2f, C3k, C3k2, the C2PSA attention stage and the DFL detect head.

Written from the YOLOv8 / YOLO11 architecture descriptions and checked against the published
models' shapes and outputs (see tests/test_yolov8_model.py); module and attribute names are the
reference's (``cv1``, ``m``, ``attn.qkv``, ``ffn``, ``cv2``/``cv3``/``dfl`` ...), so their state dicts
load as they are. Every width is read from the spec through :class:`~yoloslim.models.spec.Widths`, so
a pruned model is these blocks with smaller numbers.

Channel splits: C2f, C3k2 and C2PSA cut their first conv's output in two along the channels. They
cut with ``split(sizes)``, the sizes read from ``spec.options["split"][<cv1 conv name>]`` (the preset
writes ``[c, c]``), not with ``chunk(2)``: the pruning graph then gives each piece its own channel
group, the two halves are pruned independently (one often matters more than the other), and a pruned
spec records the new sizes so the compact model runs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from yoloslim.errors import UserError
from yoloslim.models.blocks import Conv
from yoloslim.models.spec import Widths

REG_MAX = 16  # DFL bins per box side
HEAD_WIDTH = 64  # C2PSA attention: one head per 64 channels (at least one)


def split_sizes(w: Widths, conv: str, total: int, default: list[int]) -> list[int]:
    """The piece sizes of conv ``conv``'s output split (``spec.options["split"][conv]``), recorded for a preset.

    Args:
        w: the builder's width look-up (its ``record`` flag says preset or saved spec).
        conv: the split conv's module name (``model.2.cv1.conv``).
        total: that conv's output width.
        default: the preset's sizes.
    """
    table = w.spec.options.setdefault("split", {})
    if w.record:
        table[conv] = list(default)
    sizes = table.get(conv) if isinstance(table, dict) else None
    if (not isinstance(sizes, list) or len(sizes) != len(default)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)):
        raise UserError(f"spec of {w.spec.name!r}: options.split[{conv!r}] must list {len(default)} positive widths")
    if sum(sizes) != total:
        raise UserError(f"spec of {w.spec.name!r}: options.split[{conv!r}] = {sizes} does not add up to the "
                        f"conv's {total} channels")
    return sizes


class Bottleneck3(nn.Module):
    """Two 3x3 convs with an optional residual add (kept only when the output width equals the input's)."""

    def __init__(self, w: Widths, name: str, c_in: int, mid: int, out: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = Conv(c_in, w.ch(f"{name}.cv1.conv", mid), 3, 1)
        self.cv2 = Conv(self.cv1.conv.out_channels, w.ch(f"{name}.cv2.conv", out), 3, 1)
        self.add = shortcut and c_in == self.cv2.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3k(nn.Module):
    """CSP block of YOLO11: ``cv3(cat(m(cv1(x)), cv2(x)))`` with ``n`` 3x3 bottlenecks (depth key ``name``)."""

    def __init__(self, w: Widths, name: str, c1: int, c2: int, n: int = 2, shortcut: bool = True) -> None:
        super().__init__()
        c_ = c2 // 2
        self.cv1 = Conv(c1, w.ch(f"{name}.cv1.conv", c_), 1, 1)
        self.cv2 = Conv(c1, w.ch(f"{name}.cv2.conv", c_), 1, 1)
        blocks, c_in = [], self.cv1.conv.out_channels
        for i in range(w.depth(name, n)):
            blocks.append(Bottleneck3(w, f"{name}.m.{i}", c_in, c_, c_, shortcut))
            c_in = blocks[-1].cv2.conv.out_channels
        self.cv3 = Conv(c_in + self.cv2.conv.out_channels, w.ch(f"{name}.cv3.conv", c2), 1, 1)
        self.m = nn.Sequential(*blocks)  # registered after the convs, as the reference's state dict orders them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C2f(nn.Module):
    """CSP with two convs and every bottleneck's output concatenated (YOLOv8); ``c3k`` set: C3k2 (YOLO11).

    ``cv1``'s output is split in two pieces ``a, b``; ``n`` blocks run in a chain from ``b``; ``cv2``
    reads ``cat(a, b, m0(b), m1(m0(b)), ...)``. The blocks are 3x3 bottlenecks (C2f: hidden width
    ``c``; C3k2: ``c / 2``), or C3k blocks when ``c3k`` is set.
    """

    def __init__(self, w: Widths, name: str, c1: int, c2: int, n: int, shortcut: bool, e: float = 0.5,
                 kind: str = "c2f") -> None:
        super().__init__()
        c = int(c2 * e)
        self.cv1 = Conv(c1, w.ch(f"{name}.cv1.conv", 2 * c), 1, 1)
        self.sizes = split_sizes(w, f"{name}.cv1.conv", self.cv1.conv.out_channels, [c, c])
        blocks: list[nn.Module] = []
        c_in = self.sizes[1]
        for i in range(w.depth(name, n)):
            key = f"{name}.m.{i}"
            if kind == "c3k":
                blocks.append(C3k(w, key, c_in, c, 2, shortcut))
                c_in = blocks[-1].cv3.conv.out_channels
            else:
                blocks.append(Bottleneck3(w, key, c_in, c if kind == "c2f" else c // 2, c, shortcut))
                c_in = blocks[-1].cv2.conv.out_channels
        c_cat = sum(self.sizes) + sum(_out_width(b) for b in blocks)
        self.cv2 = Conv(c_cat, w.ch(f"{name}.cv2.conv", c2), 1, 1)
        self.m = nn.ModuleList(blocks)  # registered after cv2, as the reference's state dict orders them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split(self.sizes, 1)
        y = [a, b]
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))

    def fold_removed_blocks(self, prefix: str, state: dict[str, torch.Tensor], removed: list[int]) -> None:
        """Layer pruning: ``cv2``'s input columns after blocks ``removed`` are dropped (in ``state``, in place).

        A removed block passes its input through, so its piece of the concat equals the piece before it:
        its ``cv2`` columns are added to that piece's columns, then dropped. ``prefix`` is this module's name.
        """
        widths = [*self.sizes, *(_out_width(b) for b in self.m)]
        starts = [sum(widths[:i]) for i in range(len(widths))]
        key = f"{prefix}.cv2.conv.weight"
        wt = state[key].clone()  # (out, in, 1, 1)
        for i in sorted(removed, reverse=True):  # piece 2 + i copies piece 1 + i
            src, dst = starts[2 + i], starts[1 + i]
            n = widths[2 + i]
            wt[:, dst:dst + n] += wt[:, src:src + n]
        keep = [j for i, (s, n) in enumerate(zip(starts, widths, strict=True))
                if i - 2 not in removed for j in range(s, s + n)]
        state[key] = wt[:, keep].contiguous()


def _out_width(block: nn.Module) -> int:
    return block.cv3.conv.out_channels if isinstance(block, C3k) else block.cv2.conv.out_channels


class Attention(nn.Module):
    """Multi-head self-attention over the pixels, with a depthwise positional conv (YOLO11's PSA).

    ``qkv`` (1x1) gives per head a query and key of ``head_dim / 2`` and a value of ``head_dim``
    channels; ``pe`` is a 3x3 depthwise conv on the values; ``proj`` (1x1) maps back to the block's width.
    The attention's inner width (``pe``'s, ``heads × head_dim``) is independent of the block's residual
    width, so pruning the residual stream leaves the heads whole (the pruning graph keeps ``qkv`` and
    ``pe`` fixed: their channels are reshaped across heads).
    """

    def __init__(self, w: Widths, name: str, c: int, inner: int) -> None:
        super().__init__()
        inner = w.ch(f"{name}.pe.conv", inner)
        self.heads = max(1, inner // HEAD_WIDTH)  # from the fixed inner width: pruning never changes the heads
        if inner % (2 * self.heads):
            raise UserError(f"spec of {w.spec.name!r}: attention width {inner} of {name} does not split into "
                            f"{self.heads} heads")
        self.head_dim = inner // self.heads
        self.key_dim = self.head_dim // 2
        self.scale = self.key_dim ** -0.5
        qkv = w.ch(f"{name}.qkv.conv", inner + 2 * self.key_dim * self.heads)
        if qkv != inner + 2 * self.key_dim * self.heads:
            raise UserError(f"spec of {w.spec.name!r}: {name}.qkv.conv has {qkv} channels, its heads need "
                            f"{inner + 2 * self.key_dim * self.heads}")
        self.qkv = Conv(c, qkv, 1, 1, act="linear")
        self.proj = Conv(inner, w.ch(f"{name}.proj.conv", c), 1, 1, act="linear")
        self.pe = Conv(inner, inner, 3, 1, g=inner, act="linear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        qkv = self.qkv(x).view(b, self.heads, 2 * self.key_dim + self.head_dim, h * w)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.head_dim], 2)  # (b, heads, d, hw) each
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(-1)  # (b, heads, hw, hw)
        y = (v @ attn.transpose(-2, -1)).view(b, -1, h, w) + self.pe(v.reshape(b, -1, h, w))
        return self.proj(y)


class PSABlock(nn.Module):
    """``x + attn(x)`` then ``x + ffn(x)`` (ffn: 1x1 to twice the width, 1x1 back, no activation after)."""

    def __init__(self, w: Widths, name: str, c: int, inner: int) -> None:
        super().__init__()
        self.attn = Attention(w, f"{name}.attn", c, inner)
        f0 = Conv(c, w.ch(f"{name}.ffn.0.conv", 2 * c), 1, 1)
        self.ffn = nn.Sequential(f0, Conv(f0.conv.out_channels, w.ch(f"{name}.ffn.1.conv", c), 1, 1, act="linear"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.ffn(x)


class C2PSA(nn.Module):
    """YOLO11's attention stage: ``cv1`` split in ``a, b``; ``n`` PSA blocks on ``b``; ``cv2(cat(a, b'))``."""

    def __init__(self, w: Widths, name: str, c1: int, c2: int, n: int) -> None:
        super().__init__()
        c = c1 // 2  # the reference asserts c1 == c2
        self.cv1 = Conv(c1, w.ch(f"{name}.cv1.conv", 2 * c), 1, 1)
        self.sizes = split_sizes(w, f"{name}.cv1.conv", self.cv1.conv.out_channels, [c, c])
        blocks, c_in = [], self.sizes[1]
        for i in range(w.depth(name, n)):
            blocks.append(PSABlock(w, f"{name}.m.{i}", c_in, c))
            c_in = blocks[-1].ffn[1].conv.out_channels
        self.cv2 = Conv(self.sizes[0] + c_in, w.ch(f"{name}.cv2.conv", c2), 1, 1)
        self.m = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split(self.sizes, 1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


class DFL(nn.Module):
    """Distribution Focal Loss integral: a fixed 1x1 conv holding ``0, 1, ..., reg_max - 1`` (not trained).

    Kept for the reference's key layout (``dfl.conv.weight``); the model's forward returns raw maps and
    :class:`yoloslim.models.decode.Decoder` takes the expectation itself.
    """

    def __init__(self, reg_max: int = REG_MAX) -> None:
        super().__init__()
        self.conv = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1))


class DetectDFL(nn.Module):
    """Anchor-free decoupled head: per level a box branch ``cv2`` (4·reg_max DFL logits) and a class
    branch ``cv3`` (nc logits); YOLO11's class branch uses depthwise + pointwise convs (``depthwise``).

    Returns raw maps ``(b, 4·reg_max + nc, h, w)``, box logits first (l, t, r, b sides, reg_max bins each).
    """

    def __init__(self, w: Widths, name: str, nc: int, ch: list[int], strides: list[int], reg_max: int = REG_MAX,
                 depthwise: bool = False) -> None:
        super().__init__()
        self.nc, self.reg_max, self.strides = nc, reg_max, list(strides)
        c2 = max(16, ch[0] // 4, reg_max * 4)
        c3 = max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList()
        self.cv3 = nn.ModuleList()
        for i, c in enumerate(ch):
            p = f"{name}.cv2.{i}"
            a = Conv(c, w.ch(f"{p}.0.conv", c2), 3)
            b = Conv(a.conv.out_channels, w.ch(f"{p}.1.conv", c2), 3)
            self.cv2.append(nn.Sequential(a, b, nn.Conv2d(b.conv.out_channels, 4 * reg_max, 1)))
            p = f"{name}.cv3.{i}"
            if depthwise:
                s0 = _dw_pw(w, f"{p}.0", c, c3)
                s1 = _dw_pw(w, f"{p}.1", s0[1].conv.out_channels, c3)
                c_last = s1[1].conv.out_channels
            else:
                s0 = Conv(c, w.ch(f"{p}.0.conv", c3), 3)
                s1 = Conv(s0.conv.out_channels, w.ch(f"{p}.1.conv", c3), 3)
                c_last = s1.conv.out_channels
            self.cv3.append(nn.Sequential(s0, s1, nn.Conv2d(c_last, nc, 1)))
        self.dfl = DFL(reg_max)

    def initialize_biases(self) -> None:
        """Box logits start at 1; class logits at a prior of about 5 objects per 640² image per class."""
        with torch.no_grad():
            for box, cls, s in zip(self.cv2, self.cv3, self.strides, strict=True):
                box[-1].bias.fill_(1.0)
                cls[-1].bias.fill_(math.log(5 / self.nc / (640 / s) ** 2))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.cat((box(x), cls(x)), 1) for box, cls, x in zip(self.cv2, self.cv3, xs, strict=True)]


def _dw_pw(w: Widths, name: str, c_in: int, c_out: int) -> nn.Sequential:
    """A 3x3 depthwise conv (its width is its input's) then a 1x1 conv."""
    dw = w.ch(f"{name}.0.conv", c_in)
    if dw != c_in:
        raise UserError(f"spec of {w.spec.name!r}: depthwise conv {name}.0.conv has {dw} channels, its input {c_in}")
    return nn.Sequential(Conv(c_in, c_in, 3, g=c_in), Conv(c_in, w.ch(f"{name}.1.conv", c_out), 1))
