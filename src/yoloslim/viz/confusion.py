"""``confusion_matrix.png``: the detection confusion matrix with its background row and column."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from yoloslim.engine.confusion import ConfusionMatrix
from yoloslim.engine.metrics import DetectionMetrics
from yoloslim.viz.plots import save_figure

ANNOTATE_UP_TO = 30  # classes; more and the cells are too small to hold numbers


def confusion_of(detections: DetectionMetrics, conf: float | None = None, iou: float | None = None
                 ) -> ConfusionMatrix:
    """The confusion matrix of everything ``detections`` collected (YOLOv5's thresholds by default)."""
    kw = {k: v for k, v in {"conf": conf, "iou": iou}.items() if v is not None}
    cm = ConfusionMatrix(len(detections.names), **kw)
    for gt_b, gt_c, gt_i, dt_b, dt_s, dt_c in detections.images().values():
        cm.add(gt_b, gt_c, dt_b, dt_s, dt_c, gt_ignore=gt_i)
    return cm


def plot_confusion_matrix(cm: ConfusionMatrix, names: Sequence[str], out: str | Path) -> dict[str, Any]:
    """Draw ``cm`` with every column (true class) normalised to 1, annotated with the fractions.

    Returns:
        ``{"labels": [...names, "background"], "matrix": counts [predicted][true], "conf", "iou"}``.
    """
    m = cm.matrix.astype(np.float64)
    norm = m / np.maximum(m.sum(0, keepdims=True), 1)
    labels = [*names, "background"]
    n = len(labels)
    size = min(max(5.0, 0.45 * n + 2), 16)
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.where(m > 0, norm, np.nan), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class (column)")
    if n <= ANNOTATE_UP_TO + 1:
        for (r, c), v in np.ndenumerate(norm):
            if m[r, c] > 0:
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v > 0.5 else "black")
    ticks = range(n)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    fs = 8 if n <= 30 else 4
    ax.set_xticklabels(labels, rotation=90, fontsize=fs)
    ax.set_yticklabels(labels, fontsize=fs)
    ax.set(xlabel="true", ylabel="predicted",
           title=f"confusion matrix (confidence ≥ {cm.conf:g}, IoU > {cm.iou:g})")
    save_figure(fig, out)
    return {"labels": labels, "matrix": cm.matrix.tolist(), "conf": cm.conf, "iou": cm.iou}
