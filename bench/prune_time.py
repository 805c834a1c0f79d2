"""Wall time of a whole prune (trace + score + allocate + surgery) of YOLOv5s at ratio 0.5.

Usage:
    .venv/bin/python bench/prune_time.py [--model yolov5s] [--method slim] [--ratio 0.5] [--repeats 5]

Prints the median (and min / max) of ``--repeats`` runs of ``prune_model`` on a model with random
weights and random BN γ, split into its phases; ``--json FILE`` writes the figures. The DESIGN.md
target is ≤ 1 s on the project machine (torch-pruning's build + step took 0.55-0.72 s there).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from yoloslim.models import create_model
from yoloslim.prune import ChannelGraph, PruneOptions, prune_model
from yoloslim.prune.allocate import plan_channels
from yoloslim.prune.importance import importance_for
from yoloslim.prune.surgery import apply_plan
from yoloslim.workflows.report import table, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolov5s")
    ap.add_argument("--method", default="slim", choices=["slim", "l1", "l2", "layer"])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--json", dest="json_file")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = create_model(a.model, nc=80).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.01, 1.0)
    opts = PruneOptions(method=a.method, ratio=a.ratio if a.method != "layer" else 0.4)
    prune_model(model, opts)  # warm-up: first-call costs (imports, allocator caches)

    total, phases = [], {"trace": [], "plan": [], "surgery": []}
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        prune_model(model, opts)
        total.append(time.perf_counter() - t0)
        if a.method != "layer":  # the same work, phase by phase
            t0 = time.perf_counter()
            graph = ChannelGraph.trace(model)
            t1 = time.perf_counter()
            plan = plan_channels(model, graph, importance_for(a.method), ratio=a.ratio,
                                 global_rank=a.method == "slim")
            t2 = time.perf_counter()
            apply_plan(model, plan)
            t3 = time.perf_counter()
            for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                phases[k].append(v)
    rows = [["whole prune", *_stats(total)]] + [[k, *_stats(v)] for k, v in phases.items() if v]
    print(f"{a.model}, {a.method}, ratio {opts.ratio}, {a.repeats} runs, threads {torch.get_num_threads()}")
    print(table(["phase", "median s", "min s", "max s"], rows))
    if a.json_file:
        write_json(a.json_file, {"model": a.model, "method": a.method, "ratio": opts.ratio,
                                 "repeats": a.repeats, "threads": torch.get_num_threads(),
                                 "seconds": {r[0]: {"median": r[1], "min": r[2], "max": r[3]} for r in rows}})


def _stats(v: list[float]) -> list[float]:
    return [round(statistics.median(v), 4), round(min(v), 4), round(max(v), 4)]


if __name__ == "__main__":
    main()
