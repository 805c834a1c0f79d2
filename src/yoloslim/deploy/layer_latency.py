"""Where the time of one batch-1 run goes, layer by layer, in PyTorch and in ONNX Runtime.

A *layer* is what ``yoloslim info --layers`` lists: a conv block (its conv, BN and activation
together, named without the ``.conv`` suffix), or another module with no children (an upsample, a
max-pool). PyTorch: the fused model runs with a pre- and a post-forward hook on every module without
children, each measuring its own call. ONNX Runtime: its profiler (``enable_profiling``) records
every node's kernel time, and the exporter's node names (``/model/model.4/cv1/conv/Conv``) lead
back to the module. What no layer holds (tensor ops between modules such as concat and add, the
hooks' own cost, the framework's overhead; in ONNX Runtime also layout reorders and the box
decoding, its own row ``decoder``) is the row ``(other)``, so that the rows add up to the
whole run: a layer's ``share`` is its mean time over the mean time of a whole run.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yoloslim.deploy.bench import _eval_copy, torch_threads
from yoloslim.deploy.fuse import fuse_model
from yoloslim.errors import UserError
from yoloslim.models.decode import check_input
from yoloslim.models.io import ModelInfo

OTHER = "(other)"
BLOCK_PARTS = ("conv", "bn", "act")  # a conv block's children: the layer is the block


@dataclass
class LayerTime:
    """One row: the layer's name, its mean milliseconds per run, and that as a share of the whole run."""

    name: str
    ms: float
    share: float


@dataclass
class LayerLatency:
    """The per-layer times of one backend, rows in the order the layers first ran, ``(other)`` last."""

    backend: str
    imgsz: int
    runs: int
    total_ms: float
    layers: list[LayerTime] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_ms"] = round(self.total_ms, 4)
        d["layers"] = [{"name": r.name, "ms": round(r.ms, 4), "share": round(r.share, 6)} for r in self.layers]
        return d


def layer_of(module: str) -> str:
    """The layer a module belongs to: its conv block for a block's conv, BN or activation, else itself."""
    head, _, last = module.rpartition(".")
    return head if head and last in BLOCK_PARTS else module


def _rows(backend: str, imgsz: int, runs: int, total_s: float, sums: dict[str, float]) -> LayerLatency:
    """From the summed seconds per layer over ``runs`` runs, and the summed seconds of the runs."""
    total = total_s / runs
    rows = [LayerTime(k, v / runs * 1e3, v / runs / total) for k, v in sums.items()]
    other = max(total - sum(v for v in sums.values()) / runs, 0.0)
    rows.append(LayerTime(OTHER, other * 1e3, other / total))
    return LayerLatency(backend, imgsz, runs, total * 1e3, rows)


def torch_layer_latency(model: nn.Module, imgsz: int, runs: int = 20, warmup: int = 3,
                        fuse: bool = True) -> LayerLatency:
    """Per-layer latency of ``model`` (fused unless ``fuse=False``) in PyTorch at batch 1.

    Every module without children gets hooks that time its call; a layer's time is the sum over its
    modules, averaged over ``runs`` runs after ``warmup`` untimed ones.
    """
    net = fuse_model(model) if fuse else _eval_copy(model)
    x = check_input(model.spec, 1, imgsz, imgsz)
    sums: dict[str, float] = defaultdict(float)
    started: dict[str, float] = {}
    timing = [False]
    hooks = []
    for name, m in net.named_modules():
        if name and not any(True for _ in m.children()):
            def pre(_m: nn.Module, _i: Any, name: str = name) -> None:
                started[name] = time.perf_counter()

            def post(_m: nn.Module, _i: Any, _o: Any, name: str = name) -> None:
                t = time.perf_counter() - started[name]
                if timing[0]:
                    sums[layer_of(name)] += t
                else:
                    sums.setdefault(layer_of(name), 0.0)  # first seen in the warm-up: the execution order

            hooks.append(m.register_forward_pre_hook(pre))
            hooks.append(m.register_forward_hook(post))
    total = 0.0
    try:
        with torch.inference_mode():
            for _ in range(max(warmup, 1)):
                net(x)
            timing[0] = True
            for _ in range(runs):
                t = time.perf_counter()
                net(x)
                total += time.perf_counter() - t
    finally:
        for h in hooks:
            h.remove()
    return _rows("torch", imgsz, runs, total, sums)


def onnx_module(node: str, known: set[str]) -> str | None:
    """The module an exported node belongs to, from its name (``/model/model.2/m/m.0/cv1/conv/Conv``), or
    None for a node that no module made (layout reorders, ...); ``decoder`` for the box decoding."""
    comps = [c for c in node.removesuffix("_kernel_time").split("/") if c]
    if len(comps) < 2:
        return None
    if comps[0] == "decoder":
        return "decoder"
    for scopes in (comps[1:], comps):  # the export's wrapper holds the detector as ``model``
        parts: list[str] = []
        for c in scopes:  # a list's child is scoped ``m`` then ``m.0``: the second replaces the first
            if parts and c.startswith(parts[-1] + "."):
                parts[-1] = c
            else:
                parts.append(c)
        for k in range(len(parts), 0, -1):
            name = ".".join(parts[:k])
            if name in known:
                return name
    return None


def onnx_layer_latency(model: nn.Module, imgsz: int, runs: int = 20, warmup: int = 3, threads: int | None = None,
                       workdir: str | Path | None = None) -> LayerLatency:
    """Per-layer latency of ``model`` exported to ONNX (fused, checked) in ONNX Runtime at batch 1.

    The session's profiler records the kernel time of every node; a layer's time is the sum over the
    nodes its modules became, averaged over the ``runs`` runs that follow ``warmup`` untimed ones.
    """
    from yoloslim.deploy.onnx_export import INPUT, OUTPUT, OnnxModel, export_onnx  # lazy, as in deploy.bench

    known = {n for n, _ in model.named_modules() if n}
    with tempfile.TemporaryDirectory(prefix="yoloslim-layers-") as tmp:
        work = Path(workdir or tmp)
        spec = model.spec
        info = ModelInfo(spec, [str(i) for i in range(spec.nc)], imgsz)
        path = export_onnx(model, info, work / "layers.onnx", imgsz)
        onnx = OnnxModel(path, threads=threads, spinning=False, profile_prefix=Path(tmp) / "profile")
        feed = {INPUT: check_input(spec, 1, imgsz, imgsz).numpy()}
        for _ in range(max(warmup, 1) + runs):
            onnx.session.run([OUTPUT], feed)
        events = json.loads(Path(onnx.session.end_profiling()).read_text())
        del onnx
    return _onnx_rows(events, imgsz, runs, known)


def _onnx_rows(events: list[dict[str, Any]], imgsz: int, runs: int, known: set[str]) -> LayerLatency:
    """Sum the node kernel times of the last ``runs`` ``model_run`` events of a profile, per layer."""
    model_runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                        key=lambda e: e["ts"])[-runs:]
    if len(model_runs) < runs:
        raise UserError(f"ONNX Runtime's profile holds {len(model_runs)} runs, not {runs}")
    start = model_runs[0]["ts"]
    sums: dict[str, float] = {}
    for e in sorted((e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")),
                    key=lambda e: e["ts"]):
        module = onnx_module(e["name"], known)
        key = layer_of(module) if module else None
        if key is not None and key not in sums:
            sums[key] = 0.0  # execution order, warm-up included
        if key is not None and e["ts"] >= start:
            sums[key] += e["dur"] * 1e-6
    total = sum(e["dur"] for e in model_runs) * 1e-6
    return _rows("onnxruntime", imgsz, runs, total, sums)


def per_layer_latency(model: nn.Module, imgsz: int, backends: tuple[str, ...] = ("torch", "onnxruntime"),
                      runs: int = 20, warmup: int = 3, threads: int | None = None) -> dict[str, LayerLatency]:
    """Per-layer latency on each backend (``torch`` is fused, ``torch_unfused`` is not, ``onnxruntime``)."""
    if runs < 1 or warmup < 0:
        raise UserError(f"--runs must be at least 1 and --warmup at least 0, got {runs} and {warmup}")
    makers: dict[str, Callable[[], LayerLatency]] = {
        "torch": lambda: torch_layer_latency(model, imgsz, runs, warmup),
        "torch_unfused": lambda: torch_layer_latency(model, imgsz, runs, warmup, fuse=False),
        "onnxruntime": lambda: onnx_layer_latency(model, imgsz, runs, warmup, threads),
    }
    unknown = [b for b in backends if b not in makers]
    if unknown:
        raise UserError(f"unknown backend {unknown[0]!r}; choose from {', '.join(makers)}")
    with torch_threads(threads):
        return {b: makers[b]() for b in backends}
