"""bench/latency_target.py at toy size, on a stand-in clock (latency proportional to FLOPs): the plumbing only."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from yoloslim.models.profile import profile, total_gflops
from yoloslim.prune import latency_target

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("latency_target")


def test_latency_target_bench_toy_run(tmp_path, monkeypatch, capsys):
    bench = _bench()

    def ms(model, imgsz):
        return 1.0 + 10.0 * total_gflops(profile(model, imgsz))

    def compare(models, imgsz, runs=50, warmup=5, **kw):
        return {k: {"median_ms": ms(m, imgsz)} for k, m in models.items()}

    for module in (latency_target, bench):
        monkeypatch.setattr(module, "compare_latency", compare)
    monkeypatch.setattr(latency_target, "measure_latency", lambda model, imgsz, **kw: {"median_ms": ms(model, imgsz)})
    js = tmp_path / "b.json"
    summary = bench.main(["--model", "yolov5n", "--imgsz", "96", "--targets", "0.7", "--runs", "2",
                          "--verify-runs", "2", "--threads", "1", "--vs-flops", "--json", str(js)])
    out = capsys.readouterr().out
    assert "verified ms" in out and "same FLOPs, round_to 1" in out
    assert json.loads(js.read_text()) == json.loads(json.dumps(summary))
    (r,) = summary["results"]
    assert r["share"] == 0.7 and r["verified_ms"] == pytest.approx(r["fit"]["ms"], abs=1e-3)  # one clock
    assert r["fit"]["target_ms"] == pytest.approx(0.7 * r["fit"]["base_ms"], abs=1e-3)
    assert r["verified_ms"] <= r["fit"]["target_ms"] * 1.05
    assert 0 < r["flops_fraction"] < 1 and r["exact_speedup"] > 1
    assert {"cpu", "threads", "backend", "torch", "onnxruntime"} <= set(summary["machine"])
