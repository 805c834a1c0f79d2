"""The sensitivity curves of ``yoloslim sensitivity`` as one picture: the score after pruning each group alone,
against the ratio (Li et al. 2017, arXiv:1608.08710, Fig. 2).

The most sensitive groups (largest loss at the largest ratio) are drawn in colour and named; the others
are grey, so that a model with sixty groups still reads at a glance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from yoloslim.prune.sensitivity import SensitivityCurves
from yoloslim.viz.plots import save_figure

NAMED_GROUPS = 8  # the most sensitive groups drawn in colour with a legend entry


def plot_sensitivity(curves: SensitivityCurves, path: str | Path) -> dict[str, Any]:
    """Write the curves to ``path`` (PNG).

    Returns:
        The numbers drawn: ``x`` (ratios from 0) and ``lines`` (group name -> scores from the unpruned
        model's), and ``named`` (the groups drawn in colour).
    """
    x = [0.0, *curves.ratios]
    lines = {g.name: [curves.base, *g.scores] for g in curves.groups}
    ranked = sorted(curves.groups, key=lambda g: g.loss[-1] if g.loss else 0.0, reverse=True)
    named = [g.name for g in ranked[:NAMED_GROUPS]]
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for name, y in lines.items():
        if name not in named:
            ax.plot(x, y, color="0.75", lw=0.8, zorder=1)
    for name in named:
        ax.plot(x, lines[name], marker="o", ms=3, lw=1.5, label=name, zorder=2)
    label = "mAP@.5:.95" if curves.metric == "map" else "output distance to the unpruned model"
    ax.set_xlabel("ratio of the group's channels removed (that group alone)")
    ax.set_ylabel(label)
    ax.set_title(f"sensitivity: {curves.method}, {len(curves.groups)} groups, "
                 f"{curves.val_images} val images")
    ax.grid(alpha=0.3)
    if named:
        ax.legend(fontsize=7, title="most sensitive", title_fontsize=7, loc="best")
    save_figure(fig, path)
    return {"x": x, "lines": lines, "named": named}
