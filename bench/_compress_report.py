"""bench/compress.py's report: the Markdown tables for docs/BENCHMARKS.md and the targets they check."""

from __future__ import annotations

from typing import Any

from _common import md_table

FINETUNES = {"kd": "+ fine-tune, distilled", "fd": "+ fine-tune, feature-distilled",
             "ft": "+ fine-tune, no distillation"}  # suffix -> title
DISTILLED = ("kd", "fd")  # the fine-tunes compared with the plain one (ft)

TARGETS = {  # issue 12 and DESIGN.md's performance table, for the fine-tuned models
    "ORT speed-up >= 2.5x": ("onnxruntime_speedup", 2.5),
    "ORT speed-up >= 3.5x": ("onnxruntime_speedup", 3.5),
    "Δ mAP50-95 >= -1 pt": ("delta_map_vs_control", -1.0),
    "Δ mAP50-95 >= -2 pt": ("delta_map_vs_control", -2.0),
    "params removed >= 85 %": ("params_removed", 0.85),
    "FLOPs removed >= 75 %": ("flops_removed", 0.75),
}



def print_report(s: dict[str, Any]) -> None:
    """The Markdown for docs/BENCHMARKS.md: the command, the tables, what the columns mean, the targets."""
    rows = s["models"]
    held = [r for r in rows if r.get("prune", {}).get("held")]
    b = s.get("baseline") or {}
    print(f"\nCommand: `{s['command']}`\n")
    if b:
        gain = "—" if b.get("gain") is None else f"{b['gain'] * 100:+.2f}"
        settle = b.get("settle") or []
        ctl = s.get("settled_control", True)  # the last settling run is the control (JSON before session 6: it was)
        runs = "".join(f"; settling run {i}: {r['start_map']:.3f} → {r['end_map']:.3f} ({r['gain'] * 100:+.1f})"
                       for i, r in enumerate(settle, 1))
        print(f"Baseline: {b['epochs']} epochs in {len(b['chunks'])} chunk(s)"
              + (f" and {len(settle) - 1} settling run(s)" + (" before the control" if ctl else "") if settle else "")
              + ", "
              f"{'converged' if b['converged'] else '**not converged**'} (chunks: best val mAP@.5:.95 of the "
              f"last {s['settings']['window']} epochs {gain} points over the best before them{runs}; "
              f"converged below {s['settings']['min_gain']:g}"
              + ("; the last settling run is the control" if settle and ctl else "") + ").\n")
    print(md_table(
        ["model", "epochs", "mAP50", "mAP50-95", "Δ mAP50-95 vs control", "params", "params removed",
         f"GFLOPs@{s['latency_imgsz']}", "FLOPs removed", "torch ms", "ORT ms", "torch speed-up",
         "ORT speed-up"],
        [[r["title"] + (" *" if r in held else ""), r["epochs"], f"{r['map50']:.3f}", f"{r['map']:.3f}",
          _num(r["delta_map_vs_control"], "{:+.1f}") + _ci(r.get("delta_vs_control_ci")),
          f"{r['params'] / 1e6:.2f} M",
          _pct(r.get("params_removed")),
          f"{r['gflops']:.2f}", _pct(r.get("flops_removed")), _num(r["torch_ms"], "{:.1f}"),
          _num(r["onnxruntime_ms"], "{:.1f}"), _num(r["torch_speedup"], "{:.2f}×"),
          _num(r["onnxruntime_speedup"], "{:.2f}×")] for r in rows]))
    env = s["environment"]
    lat = s["latency"]
    print(f"\nmAP on the {s['val_images']} val images at {s['eval_imgsz']} px (EMA weights of each run's "
          "last epoch); Δ in points against the control (the baseline trained as many epochs as the "
          f"fine-tuned models). GFLOPs (conv + BN) and latency at {s['latency_imgsz']} px, batch 1, "
          f"median of up to {lat['runs']} alternating rounds, {env['cpu']} (CPUs: {env['cpus']}, "
          f"threads: {lat['threads'] or env['torch_threads']}), torch {env['torch']} (Conv+BN fused), "
          f"onnxruntime {env['onnxruntime']}; speed-ups are baseline / model from the same loop; "
          "baseline and control share one architecture, and so does each pruned model with its fine-tunes. "
          f"Whole run: {s['total_wall_s'] / 60:.0f} min.")
    ci = next((r["delta_vs_control_ci"] for r in rows if r.get("delta_vs_control_ci")), None)
    if ci:
        own = next((r["map_ci"] for r in rows if r["name"] == "control"), None)
        print(f"\n[low, high]: the {ci['level'] * 100:g} % interval of Δ over {ci['rounds']} draws of the val "
              "images with replacement, both models scored on the same draws (paired bootstrap, "
              "`yoloslim.engine.bootstrap`): the part of Δ that another val set of the same size could change. "
              "It leaves out the run-to-run noise of training"
              + (f"; the control's own mAP@.5:.95 interval is [{own['low'] / 100:.3f}, {own['high'] / 100:.3f}]"
                 if own else "") + ".")
    if lat.get("onnxruntime_error"):
        print(f"\nONNX Runtime was not timed: {lat['onnxruntime_error']}")
    for r in held:
        p = r["prune"]
        if r["name"] == r["arch"]:
            print(f"* {r['title']} (and fine-tuned): the cut would have emptied {len(p['held'])} channel "
                  f"group(s); they kept their {p.get('min_channels')} strongest channels: "
                  + ", ".join(p["held"]))
    cut = [r for r in rows if r.get("right_after_pruning")]
    if cut:
        print("\nRight after pruning (no fine-tune), val mAP without and with BN recalibration:\n")
        print(md_table(
            ["pruned model", "mAP50", "mAP50 + recal", "mAP50-95", "mAP50-95 + recal", "lift (pt mAP50-95)",
             "recalibration kept"],
            [[r["title"], f"{c['no_recal']['map50']:.3f}", f"{c['recal']['map50']:.3f}",
              f"{c['no_recal']['map']:.3f}", f"{c['recal']['map']:.3f}",
              f"{(c['recal']['map'] - c['no_recal']['map']) * 100:+.1f}", "yes" if c["kept"] else "no"]
             for r in cut for c in [r["right_after_pruning"]]]))
    kd = [r for r in rows if "distill_gain" in r]
    if kd:
        print("\nDistillation: the same fine-tune with and without the baseline as teacher (distilled: its "
              "outputs; feature-distilled: its head features alone):\n")
        by = {r["name"]: r for r in rows}
        print(md_table(["pruned model", "distillation", "mAP50-95 no distillation", "mAP50-95 distilled",
                        "gain (pt)"],
                       [[by[r["arch"]]["title"].removesuffix(", pruned"),
                         FINETUNES[r["name"].rsplit("-", 1)[1]].removeprefix("+ fine-tune, "),
                         f"{by[r['arch'] + '-ft']['map']:.3f}", f"{r['map']:.3f}",
                         f"{r['distill_gain']:+.1f}" + _ci(r.get("distill_gain_ci"))] for r in kd]))
    tuned = [r for r in rows if "targets" in r]
    if tuned:
        names = list(TARGETS)
        print("\nTargets (fine-tuned models; issue 12: Δ ≥ −1 pt at ≥ 2.5× and ≥ −2 pt at ≥ 3.5× for "
              "YOLOv5s, ≥ −1.5 pt at ≥ 2.5× for YOLOv3-tiny and YOLOX-s):\n")
        marks = {None: "—", True: "yes", False: "no"}
        print(md_table(["model", *names],
                       [[r["title"], *(marks[r["targets"][k]] for k in names)] for r in tuned]))


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else fmt.format(x)


def _ci(ci: dict[str, Any] | None) -> str:
    """`` [low, high]`` of a bootstrap interval in points, or nothing."""
    return "" if not ci else f" [{ci['low']:+.1f}, {ci['high']:+.1f}]"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f} %"
