"""Per-layer latency (`bench --per-layer`): the rows are the model's layers, they add up to the whole run,
and ONNX Runtime's profile is read right. Structure and arithmetic only: no timing is asserted."""

from __future__ import annotations

import json

import pytest

from yoloslim.cli import main
from yoloslim.deploy.fuse import fuse_model
from yoloslim.deploy.layer_latency import OTHER, _onnx_rows, layer_of, onnx_module, torch_layer_latency
from yoloslim.models import build_model, model_spec
from yoloslim.models.io import ModelInfo, save_model
from yoloslim.workflows.info import info


def test_onnx_node_names_lead_back_to_modules():
    known = {"model", "model.2", "model.2.m", "model.2.m.0", "model.2.m.0.cv1", "model.2.m.0.cv1.conv",
             "model.2.cv1", "model.2.cv1.act", "backbone", "backbone.C3_p4", "backbone.C3_p4.conv1"}
    assert onnx_module("/model/model.2/m/m.0/cv1/conv/Conv_output_0_nchwc_kernel_time", known) == \
        "model.2.m.0.cv1.conv"
    assert onnx_module("/model/model.2/cv1/act/Mul/QuickGeluFusion/_kernel_time", known) == "model.2.cv1.act"
    assert onnx_module("/model/model.2/Concat_kernel_time", known) == "model.2"
    assert onnx_module("/model/backbone/C3_p4/conv1/conv/Conv_kernel_time", known) == "backbone.C3_p4.conv1"
    assert onnx_module("/decoder/Sigmoid_kernel_time", known) == "decoder"
    assert onnx_module("ReorderOutput_token_206_kernel_time", known) is None
    assert [layer_of(n) for n in ("model.2.cv1.conv", "model.2.cv1.act", "model.9.m", "model.0.bn")] == \
        ["model.2.cv1", "model.2.cv1", "model.9.m", "model.0"]


def test_onnx_profile_sums_the_timed_runs_per_layer():
    known = {"model.0", "model.0.conv", "model.0.act", "model.1", "model.1.conv"}

    def node(name, ts, dur):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur}

    events = [{"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 5000}]
    for k, start in enumerate((10_000, 20_000, 30_000)):  # the first run is the warm-up
        scale = 100 if k == 0 else 1
        events += [{"cat": "Session", "name": "model_run", "ts": start, "dur": 1000 * scale},
                   node("/model/model.0/conv/Conv", start + 10, 300 * scale),
                   node("/model/model.0/act/Sigmoid", start + 320, 100 * scale),
                   node("/model/model.1/conv/Conv", start + 430, 200 * k),
                   node("ReorderOutput_token_1", start + 700, 50)]
    lat = _onnx_rows(events, 64, 2, known)
    assert [r.name for r in lat.layers] == ["model.0", "model.1", OTHER]
    assert lat.total_ms == pytest.approx(1.0) and lat.runs == 2
    assert [r.ms for r in lat.layers] == pytest.approx([0.4, 0.3, 0.3])  # model.1: (200 + 400) / 2 µs
    assert [r.share for r in lat.layers] == pytest.approx([0.4, 0.3, 0.3])


def test_torch_rows_are_the_fused_models_layers():
    spec = model_spec("yolov5n", nc=2)
    model = build_model(spec).eval()
    lat = torch_layer_latency(model, 64, runs=2, warmup=1)
    leaves = [n for n, m in fuse_model(model).named_modules() if n and not any(True for _ in m.children())]
    names = [r.name for r in lat.layers]
    assert len(names) == len(set(names)) and names[-1] == OTHER and names[0] == "model.0"  # execution order
    assert set(names[:-1]) == {layer_of(n) for n in leaves}
    assert all(r.ms >= 0 for r in lat.layers) and lat.total_ms > 0
    assert sum(r.share for r in lat.layers) == pytest.approx(1.0)


@pytest.mark.slow
def test_bench_per_layer_table_and_json(tmp_path, capsys):
    spec = model_spec("yolov5n", nc=2)
    weights = save_model(tmp_path / "m.safetensors", build_model(spec), ModelInfo(spec, ["a", "b"], 64))
    assert main(["bench", "--weights", str(weights), "--runs", "2", "--warmup", "1", "--threads", "1",
                 "--per-layer", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    per = json.loads((tmp_path / "b.json").read_text())["per_layer"]
    assert set(per) == {"torch", "onnxruntime"}
    convs = {r["name"] for r in info(weights=str(weights))["layers"]}  # the names `info --layers` prints
    for backend, lat in per.items():
        names = [r["name"] for r in lat["layers"]]
        assert lat["runs"] == 2 and lat["imgsz"] == 64 and lat["total_ms"] > 0 and names[-1] == OTHER
        assert sum(r["share"] for r in lat["layers"]) == pytest.approx(1.0, abs=1e-4), backend
        assert all(r["ms"] >= 0 and 0 <= r["share"] <= 1 for r in lat["layers"])
        assert convs <= set(names), (backend, convs - set(names))  # every conv layer ran and is a row
        assert len(names) == len(set(names))
    assert "layer" in out and "share" in out and "GFLOPs" in out and "model.2.m.0.cv1" in out
