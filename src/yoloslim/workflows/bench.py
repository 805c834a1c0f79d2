"""``yoloslim bench``: params, GFLOPs and batch-1 latency, optionally against a second model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from yoloslim.deploy.bench import BACKENDS, Latency, benchmark
from yoloslim.deploy.layer_latency import OTHER, LayerLatency, layer_of, per_layer_latency
from yoloslim.device import resolve_device
from yoloslim.errors import UserError
from yoloslim.models.io import check_writable, load_model
from yoloslim.models.profile import count_params, profile, total_gflops
from yoloslim.models.spec import check_imgsz
from yoloslim.workflows.report import table, write_json

RATIO_KEYS = ("params", "gflops", "torch_ms", "torch_unfused_ms", "onnxruntime_ms")


def bench(weights: str, vs: str | None = None, imgsz: int | None = None, backend: str = "both",
          threads: int | None = None, runs: int = 50, warmup: int = 5, unfused: bool = False,
          max_seconds: float = 120.0, json_file: str | None = None, per_layer: bool = False,
          device: str | None = None) -> dict[str, Any]:
    """Measure ``weights`` (and ``vs``, alternately in the same loop) and print the figures and ratios.

    Args:
        weights: a yoloslim model file.
        vs: a second model file, timed alternately with the first; ratios are ``vs / weights``
            (above 1: ``weights`` is smaller or faster).
        imgsz: square input size (default: the size stored in ``weights``).
        backend: ``torch`` (fused), ``onnxruntime`` or ``both``.
        threads: intra-op threads for PyTorch and ONNX Runtime.
        runs: timed runs per candidate (capped by ``max_seconds``).
        warmup: untimed runs per candidate.
        unfused: also time PyTorch without Conv+BN fusion (``torch_unfused_ms``).
        max_seconds: time budget of the timed loop.
        per_layer: also measure ``weights`` layer by layer on each backend (``runs`` runs, see
            :mod:`yoloslim.deploy.layer_latency`), print the table and add ``"per_layer": {backend: {...}}``.
        device: where PyTorch runs (None: cuda when available, else cpu); ONNX Runtime runs on the CPU.
        json_file: write ``{"params", "gflops", "torch_ms", "onnxruntime_ms", "fps", ..., "vs": {...,
            "ratios": {...}}}``.

    Returns:
        The summary written to ``json_file``.
    """
    backends = BACKENDS if backend == "both" else (backend,)
    if backend != "both" and backend not in BACKENDS:
        raise UserError(f"unknown --backend {backend!r}; choose from {', '.join(BACKENDS)}, both")
    if runs < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise UserError(f"--runs and --threads must be at least 1 and --warmup at least 0, "
                        f"got {runs}, {threads} and {warmup}")
    check_writable(json_file, "--json")
    dev = resolve_device(device)
    model, info = load_model(weights, device=dev)
    models = {"weights": model}
    if vs:
        models["vs"], _ = load_model(vs, device=dev)
    imgsz = int(imgsz or info.imgsz)
    for m in models.values():
        check_imgsz(imgsz, m.spec)
    kinds = (*backends, "torch_unfused") if unfused else backends
    lat = benchmark(models, imgsz, kinds, threads, runs, warmup, max_seconds)
    summary = {"weights": str(weights), "imgsz": imgsz, "batch": 1, "threads": threads, "device": str(dev),
               **figures(model, imgsz, lat["weights"])}
    rows = [_row(Path(weights).name, summary, kinds)]
    if vs:
        other = {"weights": str(vs), **figures(models["vs"], imgsz, lat["vs"])}
        other["ratios"] = {k: other[k] / summary[k] for k in RATIO_KEYS if summary.get(k) and other.get(k)}
        summary["vs"] = other
        rows.append(_row(Path(vs).name, other, kinds))
    head = ["model", "params", "GFLOPs"] + [f"{b} ms (p90)" for b in kinds] + [f"{b} FPS" for b in backends]
    print(f"batch 1, {imgsz}x{imgsz}, PyTorch on {dev}, threads {threads or 'default'}, "
          f"{min(x.runs for d in lat.values() for x in d.values())}+ runs each, alternating")
    print(table(head, rows))
    if unfused:
        for name, s in [(Path(weights).name, summary)] + ([(Path(vs).name, summary["vs"])] if vs else []):
            print(f"{name}: Conv+BN fusion speed-up in PyTorch {s['torch_unfused_ms'] / s['torch_ms']:.2f}x")
    if vs:
        r = summary["vs"]["ratios"]
        a, b = Path(weights).name, Path(vs).name
        print(f"{a} is smaller / faster than {b} by (its figure divided into {b}'s; above 1 = {a} wins): "
              + ", ".join(f"{k} {v:.2f}x" for k, v in r.items()))
    if per_layer:
        layers = per_layer_latency(model, imgsz, backends, runs, warmup, threads)
        print(layer_table(layers, layer_gflops(model, imgsz)))
        summary["per_layer"] = {b: x.to_dict() for b, x in layers.items()}
    if json_file:
        write_json(json_file, summary)
    return summary


def layer_gflops(model: nn.Module, imgsz: int) -> dict[str, float]:
    """GFLOPs per layer (as :mod:`yoloslim.deploy.layer_latency` names layers) for one ``imgsz`` image."""
    out: dict[str, float] = {}
    for r in profile(model, imgsz):
        out[layer_of(r.name)] = out.get(layer_of(r.name), 0.0) + r.flops / 1e9
    return out


def layer_table(layers: dict[str, LayerLatency], gflops: dict[str, float]) -> str:
    """One row per layer (in the order the first backend ran them, ``(other)`` last): ms and share of the
    whole run per backend, and the layer's GFLOPs; then the totals."""
    names = list(dict.fromkeys(r.name for x in layers.values() for r in x.layers if r.name != OTHER))
    names.append(OTHER)
    by = {b: {r.name: r for r in x.layers} for b, x in layers.items()}
    head = ["layer"] + [h for b in layers for h in (f"{b} ms", "share")] + ["GFLOPs"]
    rows = []
    for n in names:
        cells: list[Any] = [n]
        for b in layers:
            r = by[b].get(n)
            cells += [f"{r.ms:.3f}", f"{r.share:.1%}"] if r else ["-", "-"]
        rows.append(cells + [f"{gflops[n]:.4f}" if n in gflops else "-"])
    rows.append(["total"] + [c for x in layers.values() for c in (f"{x.total_ms:.3f}", "100.0%")]
                + [f"{sum(gflops.values()):.4f}"])
    return table(head, rows)


def figures(model: nn.Module, imgsz: int, lat: dict[str, Latency]) -> dict[str, Any]:
    """Params, GFLOPs and the latency of every backend timed, as the JSON summary holds them."""
    spec = model.spec
    out: dict[str, Any] = {"model": spec.name, "family": spec.family, "params": count_params(model),
                           "gflops": round(total_gflops(profile(model, imgsz)), 4),
                           "torch_ms": None, "onnxruntime_ms": None}  # None: that backend was not timed
    for b, x in lat.items():
        out[f"{b}_ms"] = round(x.median_ms, 4)
        out[f"{b}_p90_ms"] = round(x.p90_ms, 4)
    out["fps"] = {b: round(x.fps, 2) for b, x in lat.items()}
    out["latency"] = {b: x.to_dict() for b, x in lat.items()}
    return out


def _row(name: str, s: dict[str, Any], kinds: tuple[str, ...]) -> list[Any]:
    return ([name, s["params"], s["gflops"]] + [f"{s[f'{k}_ms']:.2f} ({s[f'{k}_p90_ms']:.2f})" for k in kinds]
            + [s["fps"][b] for b in kinds if b in BACKENDS])
