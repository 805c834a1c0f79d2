"""The annotated feature-map picture of ``yoloslim visualize``: the input image next to the layer's grid,
the layer's name and shape in the title, each tile numbered with its channel, a colour scale, and
optionally the channels a pruning plan would remove framed in red.

:func:`pruned_channels` finds those channels: the plan ``yoloslim prune --method M --ratio R`` would
make, read at the conv that produces the layer's output (the layer itself, its ``.conv``, or for a
block such as a C3 its last conv of the same width).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from yoloslim.errors import UserError
from yoloslim.prune.graph import ChannelGraph
from yoloslim.prune.pipeline import PruneOptions, prune_model
from yoloslim.prune.surgery import ChannelPlan
from yoloslim.viz.feature_maps import GridLayout
from yoloslim.viz.plots import save_figure

RED = "#d62728"


def parse_mark(text: str) -> tuple[str, float]:
    """``"l1:0.5"`` -> ``("l1", 0.5)``; a channel method and a ratio in (0, 1)."""
    method, _, ratio = text.partition(":")
    try:
        r = float(ratio)
    except ValueError:
        r = -1.0
    if method not in ("slim", "l1", "l2") or not 0 < r < 1:
        raise UserError(f"--mark-pruned takes METHOD:RATIO with METHOD slim, l1 or l2 and 0 < RATIO < 1 "
                        f"(e.g. l1:0.5), got {text!r}")
    return method, r


def channel_plan(model: nn.Module, method: str, ratio: float) -> ChannelPlan:
    """The plan ``yoloslim prune --method method --ratio ratio`` makes for ``model``."""
    plan = prune_model(model, PruneOptions(method=method, ratio=ratio)).plan
    if not isinstance(plan, ChannelPlan):
        raise ValueError(f"method {method!r} removes blocks, not channels")
    return plan


def pruned_channels(plan: ChannelPlan, module: str, channels: int) -> list[int] | None:
    """Output channels of ``module`` (``channels`` wide) that ``plan`` removes; None when no conv of that
    width produces the module's output (nothing can be marked)."""
    graph: ChannelGraph = plan.graph
    convs = [(n, c) for n, c in graph.calls.items() if c.kind in ("conv", "depthwise") and c.outputs is not None]
    exact = [c for n, c in convs if n in (module, f"{module}.conv")]
    inner = [c for n, c in convs if n.startswith(f"{module}.") and sum(k for _, k in c.outputs) == channels]
    call = (exact or inner[-1:] or [None])[0]
    if call is None or sum(k for _, k in call.outputs) != channels:
        return None
    kept = plan.index(call.outputs)
    if kept is None:
        return []
    return sorted(set(range(channels)) - set(kept.tolist()))


def feature_figure(image_rgb: np.ndarray, grid_bgr: np.ndarray, layout: GridLayout, module: str,
                   shape: tuple[int, int, int], out: str | Path, marked: list[int] | None = None,
                   mark_label: str = "") -> dict[str, Any]:
    """Write the annotated picture of one feature map.

    Args:
        image_rgb: the letterboxed model input, (S, S, 3) RGB uint8.
        grid_bgr: :func:`~yoloslim.viz.feature_maps.feature_grid`'s image of the map.
        layout: its :class:`GridLayout`.
        module: the layer's name.
        shape: the map's (c, h, w).
        out: the PNG to write.
        marked: channels to frame in red (those a pruning plan removes).
        mark_label: what the frames mean, for the legend (e.g. ``l1 at ratio 0.5``).

    Returns:
        ``{"file", "channels" (the numbers written on the tiles), "marked" (framed tiles)}``.
    """
    c, h, w = shape
    gh, gw = layout.shape
    aspect = gw / max(gh, 1)
    fig = Figure(figsize=(4.5 + 6.5 * min(max(aspect, 0.6), 1.6), 7), layout="constrained")
    gs = fig.add_gridspec(1, 3, width_ratios=[1, 1.6 * min(max(aspect, 0.6), 1.6), 0.06])
    ax_in = fig.add_subplot(gs[0])
    ax_in.imshow(image_rgb)
    ax_in.set_title(f"input {image_rgb.shape[1]}x{image_rgb.shape[0]}", fontsize=10)
    ax_in.axis("off")
    ax = fig.add_subplot(gs[1])
    ax.imshow(grid_bgr[:, :, ::-1], interpolation="nearest")
    ax.axis("off")
    numbers = list(range(layout.channels))
    fs = 7 if layout.cols <= 8 else 6 if layout.cols <= 12 else 5
    framed = [k for k in (marked or []) if k < layout.channels]
    for k in numbers:
        y, x = layout.corner(k)
        ax.text(x + 1, y + 1, str(k), fontsize=fs, color="white", va="top", ha="left",
                bbox={"boxstyle": "square,pad=0.05", "facecolor": "black", "alpha": 0.55, "linewidth": 0})
    for k in framed:
        y, x = layout.corner(k)
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), layout.tile_w, layout.tile_h, fill=False, edgecolor=RED,
                               linewidth=2))
    shown = f"channels 0-{layout.channels - 1} of {c}" if layout.channels < c else f"all {c} channels"
    title = f"{module}: {c}x{h}x{w} ({shown})"
    if marked is not None:
        title += f"\nred: the {len(marked)} channels {mark_label} removes" + (
            f" ({len(framed)} shown)" if len(framed) < len(marked) else "")
    fig.suptitle(title, fontsize=11)
    cax = fig.add_subplot(gs[2])
    fig.colorbar(ScalarMappable(Normalize(0, 1), colormaps["viridis"]), cax=cax,
                 label="activation, scaled per channel (0 = its min, 1 = its max)")
    save_figure(fig, out)
    return {"file": str(out), "channels": numbers, "marked": framed}


def letterboxed_rgb(x: torch.Tensor) -> np.ndarray:
    """(1, 3, S, S) uint8 RGB tensor -> (S, S, 3) array for drawing."""
    return x[0].permute(1, 2, 0).numpy()
