"""The pruning report: one self-contained HTML page of what ``yoloslim prune`` did and measured.

``prune --report FILE.html`` writes it. Everything is inside the file: the pictures are PNGs drawn
with matplotlib (the same functions as the run folders' pictures) and inlined as base64 ``data:``
URIs, the style is inline, and there is no script, so the page opens offline, from an e-mail or a CI
artefact. Sections appear when their numbers exist: the before/after table (params, FLOPs, latency
and mAP when measured, and what speed the cut bought), the latency target's search, channels per
layer before and after, the |γ| histograms, the sensitivity curves when ``--allocation
sensitivity`` used them, per-layer latency before and after when latency was measured, the PR curves
of both models when ``--data`` was given, and what was done (the options and the model's history).
"""

from __future__ import annotations

import base64
import html
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import nn

from yoloslim import __version__
from yoloslim.deploy.layer_latency import OTHER, LayerLatency
from yoloslim.engine.metrics import MetricCurves
from yoloslim.models.io import atomic_write
from yoloslim.prune.sensitivity import SensitivityCurves
from yoloslim.prune.sparsity import gamma_stats, save_gamma_histogram
from yoloslim.viz.plots import BLUE, plot_pr_curve, save_figure
from yoloslim.viz.sensitivity import plot_sensitivity

GREY = "#b8c4d6"
TOP_LAYERS = 20  # per-layer latency: the slowest layers of the unpruned model drawn
# the before/after table: summary key, label, format
ROWS = (("params", "parameters", "{:,}"), ("gflops", "GFLOPs", "{:.4g}"), ("latency_ms", "latency ms", "{:.2f}"),
        ("map50", "mAP@.5", "{:.4f}"), ("map", "mAP@.5:.95", "{:.4f}"))


@dataclass
class ReportParts:
    """What the page is made of.

    Attributes:
        summary: the ``prune`` workflow's summary (what ``--json`` writes).
        before: the unpruned model.
        after: the pruned model (as saved).
        history: the saved model's history (trained, sparse-trained, pruned ...).
        sensitivity: the curves ``--allocation sensitivity`` used.
        layer_latency: ``{"before": ..., "after": ...}`` per-layer latency, when measured.
        pr_curves: ``{"before": ..., "after": ...}`` PR curves on ``--data``'s val split, when measured.
    """

    summary: dict[str, Any]
    before: nn.Module
    after: nn.Module
    history: list[dict[str, Any]]
    sensitivity: SensitivityCurves | None = None
    layer_latency: dict[str, LayerLatency] | None = None
    pr_curves: dict[str, MetricCurves] | None = None


def write_report(path: str | Path, parts: ReportParts) -> dict[str, Any]:
    """Write the page to ``path`` (atomically).

    Returns:
        ``{"figures": [titles of the pictures, in order], "table": {key: {"before": v, "after": v}}}``.
    """
    s = parts.summary
    figures: list[str] = []
    sections: list[str] = []
    with tempfile.TemporaryDirectory(prefix="yoloslim-report-") as tmp:
        def picture(title: str, file: Path) -> str:
            figures.append(title)
            data = base64.b64encode(file.read_bytes()).decode("ascii")
            return f'<figure><img class="plot" alt="{_e(title)}" src="data:image/png;base64,{data}"></figure>'

        sections.append(_table_section(s))
        if s.get("target_latency"):
            sections.append(_target_section(s["target_latency"]))
        changed = [r for r in s["layers"]
                   if (r["c_out_before"], r["c_in_before"]) != (r["c_out_after"], r["c_in_after"])]
        rows = changed or s["layers"]
        sections.append(f"<h2>Channels per layer</h2><p>{len(changed)} of {len(s['layers'])} convs changed"
                        f"{' (shown)' if changed else ''}.</p>"
                        + picture("channels per layer", save_figure(_channels_figure(rows), Path(tmp, "ch.png"))))
        gammas = []
        for label, model in (("before", parts.before), ("after", parts.after)):
            file = save_gamma_histogram(gamma_stats(model), Path(tmp, f"gamma-{label}.png"), title=f"|γ| {label}")
            gammas.append(picture(f"γ histogram {label}", file))
        sections.append("<h2>|γ| of the prunable batch norms</h2><div class=\"row\">" + "".join(gammas) + "</div>")
        if parts.sensitivity is not None:
            file = Path(tmp, "sens.png")
            plot_sensitivity(parts.sensitivity, file)
            sections.append("<h2>Sensitivity curves</h2><p>Each group pruned alone (the curves "
                            "<code>--allocation sensitivity</code> allocated from).</p>" + picture("sensitivity", file))
        if parts.layer_latency:
            b, a = parts.layer_latency["before"], parts.layer_latency["after"]
            sections.append(f"<h2>Per-layer latency ({_e(b.backend)}, batch 1, {b.imgsz} px)</h2>"
                            f"<p>Whole run {b.total_ms:.2f} ms before, {a.total_ms:.2f} ms after (means of {b.runs} "
                            "runs with per-layer timing, which adds its own cost).</p>"
                            + picture("per-layer latency", save_figure(_latency_figure(b, a), Path(tmp, "lat.png"))))
        if parts.pr_curves:
            prs = []
            for label, curves in parts.pr_curves.items():
                file = Path(tmp, f"pr-{label}.png")
                plot_pr_curve(curves, file)
                prs.append(f"<div><h3>{_e(label)}</h3>{picture(f'PR curve {label}', file)}</div>")
            sections.append("<h2>Precision-recall on the val split</h2><div class=\"row\">" + "".join(prs) + "</div>")
        sections.append(_done_section(s, parts.history))
    page = _page(s, "\n".join(sections))
    atomic_write(Path(path), lambda t: Path(t).write_text(page, encoding="utf-8"))
    table = {k: {"before": s["before"].get(k), "after": s["after"].get(k)} for k, _, _ in ROWS}
    return {"figures": figures, "table": table}


def _e(x: Any) -> str:
    return html.escape(str(x))


def _table_section(s: dict[str, Any]) -> str:
    b, a = s["before"], s["after"]
    rows = []
    for key, label, fmt in ROWS:
        if b.get(key) is None or a.get(key) is None:
            continue
        if key == "latency_ms":
            label = f"{label} ({s.get('latency_backend') or 'torch'}, median, batch 1)"
        change = f"{(a[key] - b[key]) / b[key] * 100:+.1f} %" if b[key] else ""
        rows.append(f'<tr><th>{_e(label)}</th><td data-key="{key}-before">{fmt.format(b[key])}</td>'
                    f'<td data-key="{key}-after">{fmt.format(a[key])}</td><td>{change}</td></tr>')
    lines = [f"<h2>Before and after (at {s['imgsz']} px)</h2>",
             "<table><tr><th>metric</th><th>before</th><th>after</th><th>change</th></tr>", *rows, "</table>"]
    if a.get("latency_ms") and b.get("latency_ms"):
        lines.append(f'<p class="big">The cut bought <b data-key="speedup">{b["latency_ms"] / a["latency_ms"]:.2f}×'
                     f"</b> speed for {b['gflops'] / a['gflops']:.2f}× fewer FLOPs.</p>")
    else:
        lines.append(f"<p>{b['gflops'] / a['gflops']:.2f}× fewer FLOPs; latency not measured "
                     "(<code>--latency-runs 0</code>).</p>")
    return "\n".join(lines)


def _target_section(t: dict[str, Any]) -> str:
    m = t["machine"]
    verdict = "reached" if t["within"] else "not reached within 5 % (the nearest shape not slower was kept)"
    probes = "".join(f"<tr><td>{p['ratio']:.4f}</td><td>{p['ms']:.2f}</td></tr>" for p in t["probes"])
    return (f"<h2>Latency target</h2><p>Target <b>{t['target_ms']:.4g} ms</b>: {verdict}; measured "
            f"<b data-key=\"target-ms\">{t['ms']:.2f} ms</b> ({t['speedup']:.2f}× the unpruned "
            f"{t['base_ms']:.2f} ms) at "
            f"ratio {t['ratio']:.3f}. Measured on {_e(m['cpu'])}, threads {m['threads']}, "
            f"{_e(m['backend'])} (torch {_e(m['torch'])}, onnxruntime {_e(m['onnxruntime'])}).</p>"
            f"<table><tr><th>ratio tried</th><th>ms</th></tr>{probes}</table>")


def _done_section(s: dict[str, Any], history: list[dict[str, Any]]) -> str:
    done = [("method", s["method"]), ("ratio of prunable channels", f"{s['ratio']:.4g}")]
    pruned = history[-1] if history and history[-1].get("action") == "pruned" else {}
    for key in ("allocation", "global", "round_to", "target_flops", "target_params", "include", "min_channels",
                "blocks", "fold_bias", "sensitivity", "steps", "finetune_epochs"):
        if pruned.get(key) is not None:
            done.append((key, pruned[key]))
    if s.get("target_latency"):
        t = s["target_latency"]
        done.append(("--target-latency", f"{t['target_ms']:.4g} ms ({t['machine']['backend']}): "
                     f"{'reached' if t['within'] else 'not reached'}, {t['ms']:.2f} ms"))
    if s.get("calib"):
        c = s["calib"]
        done.append(("BN recalibration", f"{c['images']} images of {c['source']}"
                     + ("" if c["kept"] else " (not kept: it lowered mAP@.5:.95)")))
    else:
        done.append(("BN recalibration", "none"))
    if s.get("held"):
        done.append(("held by --min-channels", ", ".join(s["held"])))
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in done)
    events = "".join(
        f"<tr><td>{_e(e.get('action', ''))}</td><td>{_e(e.get('time', ''))}</td><td>"
        + _e(", ".join(f"{k}={v}" for k, v in e.items() if k not in ("action", "time", "latency")))
        + "</td></tr>" for e in history)
    return (f"<h2>What was done</h2><table>{rows}</table><h3>The model's history</h3>"
            f"<table><tr><th>action</th><th>time</th><th>details</th></tr>{events}</table>"
            "<p>Fine-tuning after the cut, when done with <code>yoloslim train --weights PRUNED</code>, appears in "
            "the fine-tuned model's history.</p>")


def _page(s: dict[str, Any], body: str) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>yoloslim pruning report: {_e(Path(s['weights']).name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f1f4f8; text-align: left; }}
img.plot {{ max-width: 100%; }}
figure {{ margin: 0.5em 0; }}
.row {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.row img.plot {{ max-width: 500px; }}
.big {{ font-size: 1.2em; }}
code {{ background: #f1f4f8; padding: 0 0.2em; }}
</style></head><body>
<h1>Pruning report</h1>
<p><code>{_e(s['weights'])}</code> → <code>{_e(s['out'])}</code>, {_e(s['method'])}; {when}, yoloslim {__version__}.</p>
{body}
</body></html>
"""


def _channels_figure(rows: list[dict[str, Any]]) -> Figure:
    """Horizontal bars: each conv's output channels before (grey) and after (blue)."""
    names = [r["name"] for r in rows]
    y = range(len(rows))
    fig = Figure(figsize=(9, max(2.5, 0.18 * len(rows) + 1)))
    ax = fig.add_subplot()
    ax.barh(list(y), [r["c_out_before"] for r in rows], color=GREY, label="before")
    ax.barh(list(y), [r["c_out_after"] for r in rows], height=0.5, color=BLUE, label="after")
    ax.set_yticks(list(y), names, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("output channels")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return fig


def _latency_figure(before: LayerLatency, after: LayerLatency) -> Figure:
    """The slowest layers of the unpruned model: ms before and after, side by side."""
    after_ms = {r.name: r.ms for r in after.layers}
    rows = sorted((r for r in before.layers if r.name != OTHER), key=lambda r: -r.ms)[:TOP_LAYERS]
    rows += [r for r in before.layers if r.name == OTHER]
    y = range(len(rows))
    fig = Figure(figsize=(9, max(2.5, 0.25 * len(rows) + 1)))
    ax = fig.add_subplot()
    ax.barh([i - 0.2 for i in y], [r.ms for r in rows], height=0.4, color=GREY, label="before")
    ax.barh([i + 0.2 for i in y], [after_ms.get(r.name, 0.0) for r in rows], height=0.4, color=BLUE, label="after")
    ax.set_yticks(list(y), [r.name for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms per run (mean)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return fig
