"""Describe a model: per-layer widths, parameters and FLOPs, and the totals."""

from __future__ import annotations

from typing import Any

from yoloslim.errors import UserError
from yoloslim.models import build_model, model_spec
from yoloslim.models.io import check_writable, load_model
from yoloslim.models.profile import conv_gflops, count_params, profile, total_gflops
from yoloslim.models.spec import check_imgsz
from yoloslim.prune.latency_target import describe_fit
from yoloslim.workflows.report import table, write_json


def info(weights: str | None = None, model: str | None = None, nc: int = 80, imgsz: int = 640,
         layers: bool = False, json_file: str | None = None) -> dict[str, Any]:
    """Print a model's summary (and per-layer table) and return it as a dict."""
    if (weights is None) == (model is None):
        raise UserError("give exactly one of --weights or --model")
    check_writable(json_file, "--json")
    if weights:
        net, meta = load_model(weights)
        spec, history = meta.spec, meta.history
    else:
        spec = model_spec(model, nc)
        net, history = build_model(spec), []
    check_imgsz(imgsz, spec)
    rows = profile(net, imgsz)
    params = count_params(net)
    bn_params = {r.name.removesuffix(".bn"): r.params for r in rows if r.kind == "BatchNorm2d"}
    gflops = total_gflops(rows)
    summary = {
        "model": spec.name, "family": spec.family, "nc": spec.nc, "params": params,
        "gflops": round(gflops, 3), "conv_gflops": round(conv_gflops(rows), 3), "imgsz": imgsz, "history": history,
        "layers": [{"name": r.name.removesuffix(".conv") if r.name.endswith(".conv") else r.name, "c_in": r.c_in,
                    "c_out": r.c_out,
                    "params": r.params + bn_params.get(r.name.removesuffix(".conv"), 0),  # conv + its BN
                    "gflops": round(r.flops / 1e9, 4)}
                   for r in rows if r.kind == "Conv2d"],
    }
    if layers:
        print(table(["layer", "c_in", "c_out", "params", "GFLOPs"],
                    [[lr["name"], lr["c_in"], lr["c_out"], lr["params"], lr["gflops"]] for lr in summary["layers"]]))
        print()
    print(f"{spec.name} ({spec.family}, {spec.nc} classes): {len(summary['layers'])} convs, "
          f"{params:,} parameters, {gflops:.1f} GFLOPs at {imgsz}x{imgsz} "
          f"({summary['conv_gflops']:.2f} in convolutions)")
    for event in history:
        details = ", ".join(f"{k}={describe_fit(v) if k == 'latency' and isinstance(v, dict) else v}"
                            for k, v in event.items() if k not in ("action", "time"))
        print(f"  {event.get('time', '')} {event['action']}" + (f": {details}" if details else ""))
    if json_file:
        write_json(json_file, summary)
    return summary
