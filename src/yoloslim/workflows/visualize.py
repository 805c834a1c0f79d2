"""``yoloslim visualize``: one picture of feature maps per chosen layer, for one input image: the input, the
layer's channels in a numbered grid with a colour scale, optionally the channels a pruning plan removes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from yoloslim.data.images import read_image
from yoloslim.data.letterbox import letterbox
from yoloslim.errors import UserError
from yoloslim.models.decode import preprocess
from yoloslim.models.io import check_writable, load_model
from yoloslim.models.spec import check_imgsz
from yoloslim.viz.feature_figure import channel_plan, feature_figure, letterboxed_rgb, parse_mark, pruned_channels
from yoloslim.viz.feature_maps import capture, feature_grid, resolve_layers
from yoloslim.workflows.report import table, write_json


def visualize(weights: str | Path, source: str | Path, layers: list[str], out: str | Path = "runs/visualize",
              imgsz: int | None = None, max_channels: int = 64,
              json_file: str | Path | None = None, mark_pruned: str | None = None) -> dict[str, Any]:
    """Run the model on ``source`` (letterboxed to ``imgsz``) and save a picture per layer in ``out``.

    ``mark_pruned`` (``METHOD:RATIO``, e.g. ``l1:0.5``) frames in red the channels that
    ``yoloslim prune --method METHOD --ratio RATIO`` would remove from each layer.

    A layer whose output is several maps (a head returning one map per stride) gives one PNG per map,
    suffixed ``_0``, ``_1`` ...

    Returns:
        ``{"weights", "source", "imgsz", "layers": [...]}``, one row per PNG:
        ``{"layer", "module", "file", "shape" (c, h, w), "channels_shown", "grid" (rows, cols)}``, and with
        ``mark_pruned`` ``"pruned"``: the channels the plan removes (None: no conv of the layer's width).
    """
    check_writable(out, "--out", folder=True)
    check_writable(json_file, "--json")
    model, info = load_model(weights)
    imgsz = int(imgsz or info.imgsz)
    check_imgsz(imgsz, info.spec)
    if not layers:
        raise UserError("give at least one --layer (a name `yoloslim info --weights CKPT --layers` prints)")
    found = resolve_layers(model, layers)
    mark = parse_mark(mark_pruned) if mark_pruned else None
    img = read_image(source) if Path(source).is_file() else None
    if img is None:
        raise UserError(f"{source}: not a readable image file")
    boxed, _ = letterbox(img, imgsz)  # (S, S, 3) BGR
    rgb = torch.from_numpy(boxed[:, :, ::-1].copy()).permute(2, 0, 1)[None]  # (1, 3, S, S) uint8
    x = preprocess(rgb, info.spec)
    maps = capture(model, x, list(dict.fromkeys(found.values())))
    plan = channel_plan(model, *mark) if mark else None

    out = Path(out)
    rows: list[dict[str, Any]] = []
    for requested, module in found.items():
        tensors = maps.get(module) or []
        if not tensors:
            raise UserError(f"layer {requested!r} gives no (b, c, h, w) feature map to draw")
        for k, t in enumerate(tensors):
            suffix = f"_{k}" if len(tensors) > 1 else ""
            path = out / f"{_safe(module)}{suffix}.png"
            grid, layout = feature_grid(t[0], max_channels)
            shape = tuple(t.shape[1:])
            # several maps (a head's levels): which conv made which is not known here, so nothing is marked
            pruned = pruned_channels(plan, module, shape[0]) if plan is not None and len(tensors) == 1 else None
            feature_figure(letterboxed_rgb(rgb), grid, layout, module + suffix, shape, path, marked=pruned,
                           mark_label=f"{mark[0]} at ratio {mark[1]:g}" if mark else "")
            row = {"layer": requested, "module": module, "file": str(path), "shape": list(shape),
                   "channels_shown": layout.channels, "grid": [layout.rows, layout.cols]}
            if mark:
                row["pruned"] = pruned
            rows.append(row)
    print(table(["layer", "feature map (c, h, w)", "shown", "file"],
                [[r["module"], "x".join(map(str, r["shape"])), r["channels_shown"], r["file"]]
                 for r in rows]))
    summary = {"weights": str(weights), "source": str(source), "imgsz": imgsz, "layers": rows}
    if json_file:
        write_json(json_file, summary)
    return summary


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)

