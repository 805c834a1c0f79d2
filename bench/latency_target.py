"""`prune --target-latency` on a YOLOv5s at 640: does the pruned model run in the time asked for?

Usage (alone on the machine: timings):
    OMP_NUM_THREADS=1 .venv/bin/python bench/latency_target.py [--model yolov5s] [--weights FILE] \
        [--imgsz 640] [--targets 0.5 0.3] [--backend onnxruntime] [--method l1] [--runs 20] \
        [--verify-runs 40] [--threads 1] [--json FILE]

For each target (a share of the unpruned model's latency measured at the start), the model is pruned
with ``prune_model(..., PruneOptions(target_latency=...))`` (the library path ``yoloslim prune
--target-latency`` takes, default ``--round-to``), then timed again independently: the pruned and the
unpruned model alternating in one loop of ``--verify-runs`` runs. The table gives the target, the
search's own estimate, the verification, their distance to the target and the speed-up. With
``--vs-flops``, the same FLOPs fraction reached with ``--target-flops`` and exact widths (``round_to=1``,
the former default) is timed beside it, to show what the widths alone change. Random weights unless
``--weights``: latency does not depend on them (use ``l1``/``group``: ``slim`` needs trained γ).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch

from yoloslim.deploy.bench import compare_latency, machine_info
from yoloslim.models import create_model
from yoloslim.models.io import load_model
from yoloslim.models.profile import count_params, profile, total_gflops
from yoloslim.prune import PruneOptions, prune_model
from yoloslim.prune.latency_target import LATENCY_BACKEND, LatencyTarget
from yoloslim.workflows.report import table, write_json


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolov5s", help="a model name (random weights) ...")
    ap.add_argument("--weights", help="... or a model file")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3],
                    help="latency targets as shares of the unpruned model's")
    ap.add_argument("--backend", default=LATENCY_BACKEND, choices=["onnxruntime", "torch"])
    ap.add_argument("--method", default="l1")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per candidate in the search")
    ap.add_argument("--verify-runs", type=int, default=40, help="timed runs of the independent verification")
    ap.add_argument("--vs-flops", action="store_true",
                    help="also time the same FLOPs fraction pruned with --target-flops and exact widths (round_to 1)")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's setting)")
    ap.add_argument("--json", dest="json_file")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    threads = a.threads or torch.get_num_threads()
    torch.manual_seed(0)
    model = (load_model(a.weights)[0] if a.weights else create_model(a.model, nc=80)).eval()
    base_gflops = total_gflops(profile(model, a.imgsz))
    rows, results = [], []
    for share in a.targets:
        target = LatencyTarget(0.0, share, backend=a.backend, imgsz=a.imgsz, runs=a.runs, threads=threads)
        result = prune_model(model, PruneOptions(method=a.method, target_latency=target))
        fit = result.latency
        pruned = result.model.eval()
        gflops = total_gflops(profile(pruned, a.imgsz))
        models = {"pruned": pruned, "base": model}
        if a.vs_flops:
            exact = prune_model(model, PruneOptions(method=a.method, target_flops=round(gflops / base_gflops, 4),
                                                    round_to=1)).model.eval()
            models["exact"] = exact
        lat = compare_latency(models, a.imgsz, a.verify_runs, warmup=5, backend=a.backend, threads=threads,
                              max_seconds=600.0)
        verified = lat["pruned"]["median_ms"] / lat["base"]["median_ms"] * fit.base_ms
        record = {"share": share, "fit": fit.to_dict(), "verified_ms": round(verified, 3),
                  "verified_speedup": round(lat["base"]["median_ms"] / lat["pruned"]["median_ms"], 3),
                  "params": count_params(pruned), "gflops": round(gflops, 4),
                  "flops_fraction": round(gflops / base_gflops, 4), "timings": lat}
        row = [f"{share:.0%}", f"{fit.target_ms:.1f}", f"{fit.ms:.1f}", f"{verified:.1f}",
               f"{(verified - fit.target_ms) / fit.target_ms * 100:+.1f} %", "yes" if fit.within else "no",
               f"{1 - fit.keep:.3f}", f"{gflops / base_gflops:.3f}", f"{record['verified_speedup']:.2f}x"]
        if a.vs_flops:
            record["exact_speedup"] = round(lat["base"]["median_ms"] / lat["exact"]["median_ms"], 3)
            row.append(f"{record['exact_speedup']:.2f}x")
        rows.append(row)
        results.append(record)
    head = ["target", "target ms", "search ms", "verified ms", "off target", "within 5 %", "ratio",
            "FLOPs kept", "speed-up"] + (["same FLOPs, round_to 1"] if a.vs_flops else [])
    machine = machine_info(a.backend, threads)
    print(f"{a.weights or a.model} at {a.imgsz} px, {a.method}, {a.backend}, threads {threads}, {machine['cpu']}")
    print(table(head, rows))
    summary = {"model": a.weights or a.model, "imgsz": a.imgsz, "method": a.method, "machine": machine,
               "settings": dataclasses.asdict(target) | {"verify_runs": a.verify_runs}, "results": results}
    if a.json_file:
        write_json(a.json_file, summary)
    return summary


if __name__ == "__main__":
    main()
