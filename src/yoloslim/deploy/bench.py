"""Latency at batch 1: PyTorch (fused, eval, no grad) and ONNX Runtime, several models side by side.

The machine a benchmark runs on is rarely quiet, so when several things are compared (two models,
two backends, fused and unfused) they are measured *alternately*: each round runs every candidate
once, in an order that rotates from round to round, so a burst of load hits all of them alike and
their ratio stays meaningful even when the absolute times drift. ONNX Runtime's worker threads
spin-wait after a run by default, which slowed whatever ran next on the same cores (a pruned YOLOv5s
in PyTorch at 640: 84 ms after ONNX Runtime runs, 66 ms without; another session's run likewise), so
the benchmark's sessions do not spin, and each backend has its own loop. Timings are medians (and
90th percentiles) over the runs; the run count is capped by a time budget.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from yoloslim.deploy.fuse import fuse_model
from yoloslim.errors import UserError
from yoloslim.log import logger
from yoloslim.models.decode import check_input
from yoloslim.models.io import ModelInfo

BACKENDS = ("torch", "onnxruntime")  # what a user chooses; PyTorch is fused
KINDS = ("torch", "torch_unfused", "onnxruntime")  # what can be timed
MIN_RUNS = 5  # timed runs per candidate even when the time budget is spent


@dataclass
class Latency:
    """Timings of one candidate, in milliseconds per batch-1 image."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    fps: float
    runs: int

    @classmethod
    def from_times(cls, seconds: list[float]) -> Latency:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        median = float(np.median(ms))
        p90 = float(np.percentile(ms, 90))
        return cls(median, p90, float(ms.mean()), float(ms.min()), 1e3 / median, len(ms))

    def to_dict(self) -> dict[str, float]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def torch_runner(model: nn.Module, imgsz: int, fuse: bool = True) -> Callable[[], Any]:
    """One batch-1 forward of ``model`` (fused copy by default) on a fixed input, without autograd, on
    the model's device (a CUDA run waits for the GPU to finish, so that the time is the run's)."""
    net = fuse_model(model) if fuse else _eval_copy(model)
    param = next(net.parameters())
    x = check_input(model.spec, 1, imgsz, imgsz).to(param.device, param.dtype)

    def run() -> Any:
        with torch.inference_mode():
            out = net(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return out

    return run


def onnx_runner(model: nn.Module, imgsz: int, workdir: str | Path, threads: int | None = None,
                names: list[str] | None = None) -> Callable[[], Any]:
    """One batch-1 ONNX Runtime run of ``model``, exported (fused; parity checked, a failure only warned
    about) into ``workdir``."""
    # here, not at the top: importing onnx takes about a second, which every `prune` would pay
    from yoloslim.deploy.onnx_export import INPUT, OUTPUT, OnnxModel, ParityError, export_onnx

    spec = model.spec
    info = ModelInfo(spec, names or [str(i) for i in range(spec.nc)], imgsz)
    out = Path(workdir) / f"bench_{id(model)}.onnx"
    try:
        path = export_onnx(model, info, out, imgsz)
    except ParityError as err:  # the time does not depend on the values: time it, and say what export will do
        logger.warning(f"{err.what()}: timed all the same (latency does not depend on it), but "
                       "`yoloslim export` refuses this model as it is")
        path = export_onnx(model, info, out, imgsz, check=False)
    session = OnnxModel(path, threads=threads, spinning=False).session
    feed = {INPUT: check_input(spec, 1, imgsz, imgsz).numpy()}
    return lambda: session.run([OUTPUT], feed)


def interleaved(runners: dict[str, Callable[[], Any]], runs: int = 50, warmup: int = 5,
                max_seconds: float = 60.0, progress: bool = True) -> dict[str, Latency]:
    """Time every runner ``runs`` times, alternately, after ``warmup`` untimed calls each.

    Args:
        runners: label -> a function running one inference.
        runs: timed runs per runner (fewer when ``max_seconds`` is reached, but at least
            :data:`MIN_RUNS`).
        warmup: untimed runs per runner first.
        max_seconds: time budget for the timed rounds.
        progress: show a tqdm bar.

    Returns:
        label -> :class:`Latency`.
    """
    if runs < 1 or warmup < 0:
        raise UserError(f"--runs must be at least 1 and warm-up at least 0, got {runs} and {warmup}")
    labels = list(runners)
    for _ in range(warmup):
        for label in labels:
            runners[label]()
    times: dict[str, list[float]] = {label: [] for label in labels}
    start = time.perf_counter()
    bar = tqdm(range(runs), desc="bench", unit="round", disable=not progress, leave=False)
    for i in bar:
        k = i % len(labels)
        for label in labels[k:] + labels[:k]:  # rotate the order: no candidate always runs first
            t = time.perf_counter()
            runners[label]()
            times[label].append(time.perf_counter() - t)
        bar.set_postfix({label: f"{np.median(v) * 1e3:.1f}ms" for label, v in times.items()})
        if i + 1 >= MIN_RUNS and time.perf_counter() - start > max_seconds:
            break
    bar.close()
    return {label: Latency.from_times(v) for label, v in times.items()}


def measure_latency(model: nn.Module, imgsz: int, runs: int = 50, warmup: int = 5, *,
                    backend: str = "torch", fuse: bool = True, threads: int | None = None,
                    max_seconds: float = 60.0) -> dict[str, float]:
    """Batch-1 latency of one model: ``{"median_ms", "p90_ms", "mean_ms", "min_ms", "fps", "runs"}``.

    Args:
        model: a yoloslim detector.
        imgsz: square input size.
        runs: timed runs (time-bounded by ``max_seconds``).
        warmup: untimed runs first.
        backend: ``"torch"`` (fused unless ``fuse=False``) or ``"onnxruntime"`` (exported to a temp file).
        fuse: fold BatchNorms first (PyTorch backend).
        threads: torch / ONNX Runtime intra-op threads (None: leave the defaults).
        max_seconds: time budget.
    """
    return compare_latency({"model": model}, imgsz, runs, warmup, backend=backend, fuse=fuse, threads=threads,
                           max_seconds=max_seconds)["model"]


def compare_latency(models: dict[str, nn.Module], imgsz: int, runs: int = 50, warmup: int = 5, *,
                    backend: str = "torch", fuse: bool = True, threads: int | None = None,
                    max_seconds: float = 60.0) -> dict[str, dict[str, float]]:
    """Latency of several models measured alternately in one run (e.g. before and after pruning).

    Returns:
        label -> the dict of :func:`measure_latency`.
    """
    kind = "torch_unfused" if backend == "torch" and not fuse else backend
    result = benchmark(models, imgsz, (kind,), threads, runs, warmup, max_seconds)
    return {label: lat[kind].to_dict() for label, lat in result.items()}


def benchmark(models: dict[str, nn.Module], imgsz: int, backends: tuple[str, ...] = BACKENDS,
              threads: int | None = None, runs: int = 50, warmup: int = 5,
              max_seconds: float = 120.0) -> dict[str, dict[str, Latency]]:
    """Every model on every backend: per backend, one timing loop in which the models alternate.

    Args:
        models: label -> model.
        imgsz: square input size.
        backends: any of ``"torch"`` (fused), ``"torch_unfused"`` and ``"onnxruntime"``.
        threads: intra-op threads for both backends.
        runs: timed runs per candidate (time-bounded).
        warmup: untimed runs per candidate.
        max_seconds: time budget of all the timed loops together (shared equally).

    Returns:
        label -> backend -> :class:`Latency`.
    """
    unknown = [b for b in backends if b not in KINDS]
    if unknown or not backends:
        raise UserError(f"unknown backend {(unknown or [''])[0]!r}; choose from {', '.join(BACKENDS)}")
    result: dict[str, dict[str, Latency]] = {label: {} for label in models}
    with tempfile.TemporaryDirectory(prefix="yoloslim-bench-") as tmp, torch_threads(threads):
        for b in backends:
            if b == "onnxruntime":
                runners = {label: onnx_runner(model, imgsz, tmp, threads) for label, model in models.items()}
            else:
                runners = {label: torch_runner(model, imgsz, fuse=b == "torch") for label, model in models.items()}
            for label, latency in interleaved(runners, runs, warmup, max_seconds / len(backends)).items():
                result[label][b] = latency
            del runners  # an ONNX Runtime session's threads must not outlive its loop
    return result


def machine_info(backend: str, threads: int | None = None) -> dict[str, Any]:
    """Where a latency was measured: CPU model, cores, threads, backend and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads or torch.get_num_threads(), "backend": backend,
            "torch": torch.__version__, "onnxruntime": version("onnxruntime"), "system": platform.platform()}


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the duration of the block (None: unchanged)."""
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _eval_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval()
