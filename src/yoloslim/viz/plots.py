"""The pictures of a training run drawn with matplotlib (Agg canvases, no pyplot or global backend): ``results.png``
from results.csv, the PR and F1 curves, the label distribution.

Each function writes one PNG (atomically) and returns the numbers it drew, so that a caller, or a
test, can check that the picture shows the run and not a template.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from yoloslim.data.source import Sample
from yoloslim.engine.metrics import MetricCurves
from yoloslim.models.io import atomic_write

DPI = 100
NAMED_CLASSES = 20  # more classes than this: the per-class lines are grey and unlabelled
BLUE = "#1f5fa8"


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically, parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # drawn off-screen, whatever backend pyplot uses elsewhere
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return path


def read_results(path: str | Path) -> dict[str, np.ndarray]:
    """results.csv as columns of floats (a blank cell, an epoch not validated, is NaN)."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    keys = list(rows[0]) if rows else []
    return {k: np.array([float(r[k]) if r.get(k) not in (None, "") else np.nan for r in rows]) for k in keys}


def results_columns(keys: Sequence[str]) -> list[str]:
    """The columns ``results.png`` draws, in its panel order: training losses, P, R, validation
    losses, mAP@.5, mAP@.5:.95, then the sparsity figure when there is one."""
    train = [k for k in keys if k.startswith("train/")]
    val = [k for k in keys if k.startswith("val/")]
    order = [*train, "metrics/precision", "metrics/recall", *val, "metrics/mAP50", "metrics/mAP50-95",
             *(k for k in keys if k.startswith("sparsity/"))]
    return [k for k in order if k in keys]


def plot_results(csv_path: str | Path, out: str | Path) -> dict[str, list[float]]:
    """``results.png``: one panel per loss and metric of results.csv against the epoch.

    Returns:
        ``{"epoch": [...], column: [...]}``: the values drawn (NaN where not validated).
    """
    cols = read_results(csv_path)
    keys = results_columns(list(cols))
    epochs = cols.get("epoch", np.arange(1, len(next(iter(cols.values()), [])) + 1))
    ncols = max(math.ceil(len(keys) / 2), 1)
    fig = Figure(figsize=(3 * ncols, 5.6))
    for i, k in enumerate(keys):
        ax = fig.add_subplot(2, ncols, i + 1)
        # NaN (not validated, or a non-finite loss) breaks the line; isolated epochs still show their marker
        ax.plot(epochs, cols[k], marker="o", markersize=3, color=BLUE, linewidth=1.5)
        ax.set_title(k, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    save_figure(fig, out)
    return {"epoch": epochs.tolist(), **{k: cols[k].tolist() for k in keys}}


def _class_lines(ax: Any, x: np.ndarray, ys: np.ndarray, curves: MetricCurves, labels: list[str]) -> None:
    named = int(curves.valid.sum()) <= NAMED_CLASSES
    for k in np.flatnonzero(curves.valid):
        if named:
            ax.plot(x, ys[k], linewidth=1, label=labels[k])
        else:
            ax.plot(x, ys[k], linewidth=1, color="grey", alpha=0.5)


def plot_pr_curve(curves: MetricCurves, out: str | Path) -> dict[str, Any]:
    """``PR_curve.png``: precision against recall at IoU .5, per class and the mean over classes.

    Returns:
        ``{"recall": [...], "mean_precision": [...], "ap50": {class: AP}, "map50"}``; the mean of
        a class's curve is its AP@.5 (COCO's 101-point rule).
    """
    x = curves.recall_points
    valid = curves.valid
    ap = {curves.names[k]: float(curves.pr_precision[k].mean()) for k in np.flatnonzero(valid)}
    mean = curves.pr_precision[valid].mean(0) if valid.any() else np.zeros_like(x)
    fig = Figure(figsize=(7, 5.5))
    ax = fig.add_subplot(1, 1, 1)
    _class_lines(ax, x, curves.pr_precision, curves, [f"{n} {ap.get(n, 0):.3f}" for n in curves.names])
    ax.plot(x, mean, linewidth=3, color=BLUE, label=f"all classes {float(mean.mean()):.3f} mAP@0.5")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7)
    save_figure(fig, out)
    return {"recall": x.tolist(), "mean_precision": mean.tolist(), "ap50": ap, "map50": float(mean.mean())}


def plot_f1_curve(curves: MetricCurves, out: str | Path) -> dict[str, Any]:
    """``F1_curve.png``: F1 at IoU .5 against the confidence, per class and the mean over classes.

    Returns:
        ``{"conf": [...], "mean_f1": [...], "best_f1", "best_conf"}`` (the unsmoothed mean's peak).
    """
    x = curves.conf
    valid = curves.valid
    mean = curves.f1[valid].mean(0) if valid.any() else np.zeros_like(x)
    i = int(mean.argmax())
    fig = Figure(figsize=(7, 5.5))
    ax = fig.add_subplot(1, 1, 1)
    _class_lines(ax, x, curves.f1, curves, curves.names)
    ax.plot(x, mean, linewidth=3, color=BLUE, label=f"all classes {mean[i]:.2f} at {x[i]:.3f}")
    ax.set(xlabel="confidence", ylabel="F1", xlim=(0, 1), ylim=(0, 1.02), title="F1-confidence curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7)
    save_figure(fig, out)
    return {"conf": x.tolist(), "mean_f1": mean.tolist(), "best_f1": float(mean[i]), "best_conf": float(x[i])}


def label_stats(samples: Sequence[Sample], nc: int) -> dict[str, np.ndarray]:
    """Instances per class, and every box's centre and size as fractions of its image (non-difficult and
    difficult alike: what the label files hold)."""
    counts = np.zeros(nc, np.int64)
    xywh = []
    for s in samples:
        if len(s.classes):
            counts += np.bincount(s.classes, minlength=nc)[:nc]
            b = s.boxes.astype(np.float64)
            wh = np.array([s.width, s.height], np.float64)
            xywh.append(np.concatenate(((b[:, :2] + b[:, 2:]) / 2 / wh, (b[:, 2:] - b[:, :2]) / wh), 1))
    boxes = np.concatenate(xywh) if xywh else np.zeros((0, 4))
    return {"counts": counts, "centres": boxes[:, :2], "sizes": boxes[:, 2:]}


def plot_labels(samples: Sequence[Sample], names: Sequence[str], out: str | Path) -> dict[str, Any]:
    """``labels.png``: instances per class, box centres and box sizes (fractions of the image).

    Returns:
        ``{"counts": {class: n}, "centres": [[x, y], ...], "sizes": [[w, h], ...]}``.
    """
    st = label_stats(samples, len(names))
    fig = Figure(figsize=(13, 4.2))
    ax = fig.add_subplot(1, 3, 1)
    ax.bar(range(len(names)), st["counts"], color=BLUE)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7 if len(names) <= 30 else 4)
    ax.set(ylabel="instances", title=f"{int(st['counts'].sum())} boxes, {len(samples)} images")
    for i, (pts, title, xl, yl) in enumerate(((st["centres"], "box centres", "x", "y"),
                                              (st["sizes"], "box sizes", "width", "height"))):
        ax = fig.add_subplot(1, 3, i + 2)
        ax.scatter(pts[:, 0], pts[:, 1], s=4, color=BLUE, alpha=max(0.05, min(0.8, 200 / max(len(pts), 1))),
                   linewidths=0)
        ax.set(xlabel=f"{xl} (fraction of the image)", ylabel=yl, title=title, xlim=(0, 1), ylim=(0, 1))
        if i == 0:
            ax.invert_yaxis()  # image coordinates: y grows downwards
    save_figure(fig, out)
    return {"counts": dict(zip(names, st["counts"].tolist(), strict=True)), "centres": st["centres"].tolist(),
            "sizes": st["sizes"].tolist()}
