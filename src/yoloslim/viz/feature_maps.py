"""Feature maps of named layers, captured with forward hooks and tiled into one image per layer.

Works for any model: layers are found by name in ``model.named_modules()`` (the names
``yoloslim info --layers`` prints, e.g. ``model.4`` or ``model.4.cv1``; a trailing ``.conv`` is
accepted), so no model code is edited to look inside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from difflib import get_close_matches

import cv2
import numpy as np
import torch
from torch import nn

from yoloslim.errors import UserError
from yoloslim.models.profile import run_hooked

BACKGROUND = 255  # white lines between tiles


@dataclass(frozen=True)
class GridLayout:
    """Where the tiles of a grid image are: ``rows x cols`` tiles of ``tile_h x tile_w`` pixels.

    Tile ``k`` (channel ``k``) has its top-left corner at
    ``(pad + (k // cols) * (tile_h + pad), pad + (k % cols) * (tile_w + pad))``.
    """

    channels: int  # channels shown (the first ones)
    total: int  # channels the layer has
    rows: int
    cols: int
    tile_h: int
    tile_w: int
    pad: int

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the grid image."""
        pad = self.pad
        return self.rows * (self.tile_h + pad) + pad, self.cols * (self.tile_w + pad) + pad

    def corner(self, k: int) -> tuple[int, int]:
        """(y, x) of the top-left pixel of tile ``k``."""
        return _corner(self, k)


def resolve_layers(model: nn.Module, names: list[str]) -> dict[str, str]:
    """Map each requested name to a module name of ``model``.

    Raises:
        UserError: for an unknown name, listing the closest module names.
    """
    modules = [n for n, _ in model.named_modules() if n]
    known = set(modules)
    found: dict[str, str] = {}
    for name in names:
        name = name.strip()
        bare = name.removesuffix(".conv")
        hit = name if name in known else bare if bare in known else None
        if hit is None:
            close = get_close_matches(name, modules, n=6, cutoff=0.6)
            hint = (f"; close ones: {', '.join(close)}" if close
                    else "; `yoloslim info --weights CKPT --layers` lists them")
            raise UserError(f"no layer named {name!r} in this model{hint}")
        found[name] = hit
    return found


def capture(model: nn.Module, x: torch.Tensor, module_names: list[str]) -> dict[str, list[torch.Tensor]]:
    """Run ``model(x)`` once and return each named module's output tensors (a list; most have one).

    Args:
        model: any module.
        x: the model's input, (b, 3, h, w).
        module_names: names in ``model.named_modules()``.
    """
    outputs: dict[str, list[torch.Tensor]] = {}

    def hook(name: str):
        def fn(_m: nn.Module, _inp: tuple, out: object) -> None:
            outs = out if isinstance(out, (list, tuple)) else [out]
            outputs[name] = [t.detach() for t in outs if isinstance(t, torch.Tensor) and t.dim() == 4]
        return fn

    run_hooked(model, x, {name: hook(name) for name in module_names})
    return outputs


def feature_grid(fmap: torch.Tensor, max_channels: int = 64, min_tile: int = 48,
                 pad: int = 2) -> tuple[np.ndarray, GridLayout]:
    """Tile the first ``max_channels`` channels of one feature map into a colour image.

    Each channel is scaled to 0..1 on its own (a constant channel is black), enlarged by an integer
    factor (nearest) until its long side reaches ``min_tile`` pixels, and coloured with viridis.

    Args:
        fmap: (c, h, w) one image's feature map.

    Returns:
        The BGR uint8 image (H, W, 3) and its :class:`GridLayout`.
    """
    if fmap.dim() != 3:
        raise ValueError(f"expected a (c, h, w) feature map, got shape {tuple(fmap.shape)}")
    if max_channels < 1:
        raise UserError(f"--max-channels must be at least 1, got {max_channels}")
    total, h, w = fmap.shape
    n = min(total, max_channels)
    maps = fmap[:n].float().cpu()  # (n, h, w)
    lo = maps.amin(dim=(1, 2), keepdim=True)
    hi = maps.amax(dim=(1, 2), keepdim=True)
    maps = ((maps - lo) / (hi - lo).clamp_min(1e-12)).nan_to_num(0.0)
    scale = max(1, math.ceil(min_tile / max(h, w)))
    tiles = (maps.numpy() * 255).round().astype(np.uint8).repeat(scale, 1).repeat(scale, 2)  # (n, th, tw)
    cols = math.ceil(math.sqrt(n))
    layout = GridLayout(n, total, math.ceil(n / cols), cols, h * scale, w * scale, pad)
    gray = np.full(layout.shape, 0, np.uint8)
    mask = np.ones(layout.shape, bool)
    for k in range(n):
        y, x = _corner(layout, k)
        gray[y:y + layout.tile_h, x:x + layout.tile_w] = tiles[k]
        mask[y:y + layout.tile_h, x:x + layout.tile_w] = False
    img = cv2.applyColorMap(gray, cv2.COLORMAP_VIRIDIS)
    img[mask] = BACKGROUND
    return img, layout


def _corner(layout: GridLayout, k: int) -> tuple[int, int]:
    r, c = divmod(k, layout.cols)
    return layout.pad + r * (layout.tile_h + layout.pad), layout.pad + c * (layout.tile_w + layout.pad)
