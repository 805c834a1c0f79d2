"""``yoloslim bench``: params, GFLOPs, batch-1 latency in PyTorch and ONNX Runtime, side by side."""

from __future__ import annotations

import argparse

from yoloslim.cli.options import add_device, add_threads


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="params, GFLOPs and batch-1 latency (PyTorch fused, ONNX Runtime)")
    p.add_argument("--weights", required=True, help="a yoloslim model file (.safetensors)")
    p.add_argument("--vs", help="a second model file, timed alternately with the first; prints the ratios")
    p.add_argument("--imgsz", type=int, default=None, help="input size (default: the model file's)")
    p.add_argument("--backend", default="both", choices=["torch", "onnxruntime", "both"],
                   help="what to time (default both)")
    add_threads(p)
    add_device(p)
    p.add_argument("--runs", type=int, default=50, help="timed runs per candidate (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per candidate first (default 5)")
    p.add_argument("--max-seconds", type=float, default=120.0,
                   help="time budget of the timed loop; fewer runs when reached (default 120)")
    p.add_argument("--unfused", action="store_true", help="also time PyTorch without Conv+BN fusion")
    p.add_argument("--json", dest="json_file", help="also write the figures as JSON")
    p.add_argument("--per-layer", action="store_true",
                   help="also time --weights layer by layer on each backend: ms and share of the whole run")
    p.set_defaults(func=lambda a: _run(a))


def _run(a: argparse.Namespace) -> int:
    from yoloslim.workflows.bench import bench

    bench(weights=a.weights, vs=a.vs, imgsz=a.imgsz, backend=a.backend, threads=a.threads, runs=a.runs,
          warmup=a.warmup, unfused=a.unfused, max_seconds=a.max_seconds, json_file=a.json_file, per_layer=a.per_layer,
          device=a.device)
    return 0
