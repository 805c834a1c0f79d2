"""``yoloslim export --format darknet``: a YOLOv3-family model to a checked ``.cfg`` + ``.weights`` pair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from yoloslim.deploy.darknet_io import export_darknet, load_darknet
from yoloslim.errors import UserError
from yoloslim.models.io import check_writable, load_model
from yoloslim.models.profile import count_params
from yoloslim.workflows.report import write_json


def export_darknet_files(weights: str | Path, out: str | Path | None = None, imgsz: int | None = None,
                         dynamic: bool = False, nms: bool = False,
                         json_file: str | Path | None = None) -> dict[str, Any]:
    """Write ``weights`` as darknet files and check them by importing them back.

    Args:
        weights: a yoloslim model file of the YOLOv3 family (pruned or not).
        out: the ``.cfg`` to write; the ``.weights`` goes next to it with the same stem. Default:
            ``<weights stem>.cfg`` next to the model file.
        imgsz: ``width``/``height`` written in ``[net]`` (default: the model file's image size).
        dynamic, nms: ONNX-only options, refused here.
        json_file: also write the summary as JSON.

    Returns:
        The summary: the two files, their sizes, layers, params and the re-import difference.
    """
    if dynamic or nms:
        raise UserError("--dynamic and --nms apply to --format onnx, not to darknet files")
    cfg = Path(out) if out else Path(weights).with_suffix(".cfg")
    if cfg.suffix.lower() != ".cfg":
        raise UserError(f"--out must name the .cfg file (the .weights goes next to it), got {cfg}")
    check_writable(cfg, "--out")
    check_writable(cfg.with_suffix(".weights"), "--out")
    check_writable(json_file, "--json")
    model, info = load_model(weights)
    if model.spec.family != "yolov3":
        raise UserError(f"--format darknet writes YOLOv3-family models; {weights} is a "
                        f"{model.spec.family} model")
    if imgsz:
        info.imgsz = int(imgsz)
    cfg, darknet_weights = export_darknet(model, info, cfg, cfg.with_suffix(".weights"))
    again, _ = load_darknet(darknet_weights, cfg=cfg)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        diff = max(float((a - b).abs().max()) for a, b in zip(model(x), again(x), strict=True))
    if diff > 1e-5:
        raise UserError(f"{cfg}: the darknet files differ from the model by {diff:.3g}; please report this")
    layers = sum(1 for line in cfg.read_text().splitlines() if line.startswith("[")) - 1
    summary = {"cfg": str(cfg), "weights": str(darknet_weights), "format": "darknet",
               "bytes": darknet_weights.stat().st_size, "layers": layers, "imgsz": info.imgsz,
               "params": count_params(model), "family": "yolov3", "max_diff": diff}
    print(f"exported {cfg} + {darknet_weights.name} ({layers} darknet layers, {summary['params']:,} "
          f"parameters, {summary['bytes'] / 1e6:.1f} MB); re-imported: max difference {diff:.2e}")
    if json_file:
        write_json(json_file, summary)
    return summary
