"""Benchmark: the figures are there, positive and consistent; candidates alternate. No timing targets."""

from __future__ import annotations

import json

import pytest

from yoloslim.cli import main
from yoloslim.deploy.bench import MIN_RUNS, compare_latency, interleaved, measure_latency
from yoloslim.models import build_model, model_spec
from yoloslim.models.io import ModelInfo, save_model
from yoloslim.models.profile import count_params

LAT_KEYS = {"median_ms", "p90_ms", "mean_ms", "min_ms", "fps", "runs"}


def _small_spec():
    spec = model_spec("yolov5n", nc=2)
    spec.channels = {k: max(4, v // 2) for k, v in spec.channels.items()}
    return spec


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    full_spec, small_spec = model_spec("yolov5n", nc=2), _small_spec()
    save_model(d / "full.safetensors", build_model(full_spec), ModelInfo(full_spec, ["a", "b"], 64))
    save_model(d / "small.safetensors", build_model(small_spec), ModelInfo(small_spec, ["a", "b"], 64))
    return d / "small.safetensors", d / "full.safetensors"


def _check_latency(d: dict, runs: int) -> None:
    assert set(d) == LAT_KEYS
    assert d["runs"] == runs
    assert 0 < d["min_ms"] <= d["median_ms"] <= d["p90_ms"]
    assert d["fps"] == pytest.approx(1e3 / d["median_ms"], rel=1e-3)


@pytest.mark.slow
def test_bench_json_with_vs_holds_figures_and_ratios(files, tmp_path, capsys):
    small, full = files
    js = tmp_path / "bench.json"
    assert main(["bench", "--weights", str(small), "--vs", str(full), "--imgsz", "64", "--runs", "3",
                 "--warmup", "1", "--threads", "1", "--unfused", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "small.safetensors is smaller / faster than full.safetensors" in out and "fusion speed-up" in out
    s = json.loads(js.read_text())
    for key in ("params", "gflops", "torch_ms", "onnxruntime_ms", "fps", "vs"):
        assert key in s
    assert s["imgsz"] == 64 and s["batch"] == 1 and s["threads"] == 1
    for fig in (s, s["vs"]):
        assert fig["params"] > 0 and fig["gflops"] > 0
        for b in ("torch", "onnxruntime", "torch_unfused"):
            assert fig[f"{b}_ms"] > 0 and fig["fps"][b] > 0
            assert fig[f"{b}_ms"] == pytest.approx(fig["latency"][b]["median_ms"])
            _check_latency(fig["latency"][b], runs=3)
    assert s["params"] == count_params(build_model(_small_spec()))
    r = s["vs"]["ratios"]
    assert set(r) == {"params", "gflops", "torch_ms", "torch_unfused_ms", "onnxruntime_ms"}
    assert r["params"] == pytest.approx(s["vs"]["params"] / s["params"])
    assert r["params"] > 2 and r["gflops"] > 2  # the small model is smaller
    assert r["onnxruntime_ms"] == pytest.approx(s["vs"]["onnxruntime_ms"] / s["onnxruntime_ms"])
    assert all(v > 0 for v in r.values())


def test_bench_single_backend_leaves_the_other_empty(files, tmp_path):
    small, _ = files
    js = tmp_path / "b.json"
    assert main(["bench", "--weights", str(small), "--backend", "torch", "--runs", "2", "--warmup", "0",
                 "--json", str(js)]) == 0
    s = json.loads(js.read_text())
    assert s["imgsz"] == 64  # the model file's size
    assert s["torch_ms"] > 0 and s["onnxruntime_ms"] is None and "vs" not in s
    assert set(s["fps"]) == {"torch"}


def test_measure_latency_and_compare_latency_for_the_prune_report():
    a, b = build_model(_small_spec()), build_model(model_spec("yolov5n", nc=2))
    d = measure_latency(a, 64, runs=3, warmup=1, threads=1)
    _check_latency(d, runs=3)
    both = compare_latency({"before": b, "after": a}, 64, runs=2, warmup=0, fuse=False)
    assert set(both) == {"before", "after"}
    for v in both.values():
        _check_latency(v, runs=2)


def test_interleaved_alternates_and_respects_the_time_budget():
    calls: list[str] = []
    runners = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    res = interleaved(runners, runs=4, warmup=1, progress=False)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == list("abc" "bca" "cab" "abc")  # every round runs all, starting elsewhere
    assert all(r.runs == 4 for r in res.values())
    slow = {"x": lambda: sum(range(1000))}
    assert interleaved(slow, runs=1000, warmup=0, max_seconds=0.0, progress=False)["x"].runs == MIN_RUNS


def test_benchmark_sessions_do_not_spin(tmp_path, monkeypatch):
    from yoloslim.deploy import bench, onnx_export

    options = []
    real = onnx_export.OnnxModel.__init__

    def spy(self, path, threads=None, spinning=True):
        real(self, path, threads, spinning)
        options.append(self.session.get_session_options())

    monkeypatch.setattr(onnx_export.OnnxModel, "__init__", spy)
    bench.onnx_runner(build_model(_small_spec()), 64, tmp_path, threads=1)()
    assert options[-1].get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_an_export_that_fails_parity_is_timed_with_a_warning(monkeypatch, tmp_path):
    """Latency does not depend on the values: a file outside the 1e-4 parity is timed, and the user is told
    that `export` would refuse it."""
    from loguru import logger

    from yoloslim.deploy import bench, onnx_export

    monkeypatch.setattr(onnx_export, "TOLERANCE", -1.0)  # every file fails the check
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        out = bench.onnx_runner(build_model(_small_spec()), 64, tmp_path, threads=1)()
    finally:
        logger.remove(sink)
    assert out[0].shape[0] == 1
    assert len(warnings) == 1 and "differs from PyTorch" in warnings[0] and "`yoloslim export` refuses" in warnings[0]


def test_each_backend_has_its_own_loop(monkeypatch):
    """ONNX Runtime's spinning threads must not sit in the loop that times PyTorch."""
    from yoloslim.deploy import bench

    loops: list[tuple[list[str], float]] = []

    def record(runners, runs, warmup, max_seconds, progress=True):
        loops.append((sorted(runners), max_seconds))
        return interleaved(runners, runs=1, warmup=0, progress=False)

    monkeypatch.setattr(bench, "interleaved", record)
    models = {"full": build_model(model_spec("yolov5n", nc=2)), "small": build_model(_small_spec())}
    out = bench.benchmark(models, 64, ("torch", "onnxruntime"), threads=1, runs=1, warmup=0, max_seconds=10)
    assert loops == [(["full", "small"], 5.0), (["full", "small"], 5.0)]  # two loops, the budget shared
    assert set(out) == {"full", "small"} and all(set(v) == {"torch", "onnxruntime"} for v in out.values())


@pytest.mark.parametrize("args,message", [
    (["--imgsz", "70"], "multiple of 32"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--runs", "0"], "--runs and --threads must be at least 1"),
    (["--vs", "missing.safetensors"], "no such file"),
])
def test_bad_bench_input_is_one_line_exit_2(files, args, message, capsys):
    assert main(["bench", "--weights", str(files[0]), "--backend", "torch", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
